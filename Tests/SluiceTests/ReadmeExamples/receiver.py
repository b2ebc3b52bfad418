# An edge function in miniature: verifies each delivery with the Standard
# Webhooks library (pip install standardwebhooks) and applies its effect
# once per webhook-id, however often it arrives.
import os
import sqlite3
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["WEBHOOK_SECRET"])  # the endpoint's whsec_... secret
effects = sqlite3.connect(os.environ.get("EFFECTS_DB", "effects.db"))
effects.execute("CREATE TABLE IF NOT EXISTS applied (webhook_id TEXT PRIMARY KEY)")


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            event = webhook.verify(body, dict(self.headers))
        except WebhookVerificationError:
            self.send_response(401)  # not from Sluice, or altered: not retried
            self.end_headers()
            return
        webhook_id = self.headers["webhook-id"]
        with effects:  # the effect and its webhook-id commit together
            first = effects.execute("INSERT OR IGNORE INTO applied VALUES (?)", (webhook_id,)).rowcount == 1
            if first:
                print(f"applied {webhook_id}: {event}", flush=True)  # the effect: mail, payment, push...
        if not first:
            print(f"already applied {webhook_id}", flush=True)
        self.send_response(200)  # any 2xx: delivered; 5xx or 429: Sluice retries
        self.end_headers()


HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Receiver).serve_forever()
