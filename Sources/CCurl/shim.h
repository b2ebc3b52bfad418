#ifndef SLUICE_CCURL_SHIM_H
#define SLUICE_CCURL_SHIM_H
#include <curl/curl.h>

// curl_easy_setopt, curl_easy_getinfo and curl_multi_setopt are variadic,
// which Swift cannot call: one typed wrapper per argument kind.
static inline CURLcode sluice_curl_set_long(CURL *easy, CURLoption option, long value) {
  return curl_easy_setopt(easy, option, value);
}
static inline CURLcode sluice_curl_set_pointer(CURL *easy, CURLoption option, const void *value) {
  return curl_easy_setopt(easy, option, value);
}
static inline CURLcode sluice_curl_set_write_function(CURL *easy, size_t (*function)(char *, size_t, size_t, void *)) {
  return curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, function);
}
static inline CURLcode sluice_curl_get_long(CURL *easy, CURLINFO info, long *value) {
  return curl_easy_getinfo(easy, info, value);
}
static inline CURLcode sluice_curl_get_double(CURL *easy, CURLINFO info, double *value) {
  return curl_easy_getinfo(easy, info, value);
}
static inline CURLcode sluice_curl_get_pointer(CURL *easy, CURLINFO info, void **value) {
  return curl_easy_getinfo(easy, info, value);
}
static inline CURLMcode sluice_curl_multi_set_long(CURLM *multi, CURLMoption option, long value) {
  return curl_multi_setopt(multi, option, value);
}
// CURLMsg's `data` is a union: read the transfer's result here.
static inline CURLcode sluice_curl_message_result(const CURLMsg *message) { return message->data.result; }
#endif
