#include "common/net/grpc_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace fedtune::net {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

bool StartsWord(char c) {
  switch (c) {
    case ' ':
    case '\t':
    case '\n':
    case '\'':
    case '"':
    case '`':
    case '(':
    case '[':
    case '{':
    case '<':
    case '=':
    case ':':
    case ',':
    case ';':
      return true;
    default:
      return false;
  }
}

bool InPath(char c) {
  switch (c) {
    case ' ':
    case '\t':
    case '\n':
    case '\r':
    case '\'':
    case '"':
    case '`':
    case ')':
    case ']':
    case '}':
    case '>':
    case ',':
    case ';':
      return false;
    default:
      return static_cast<unsigned char>(c) >= 0x20;
  }
}

}  // namespace

std::string RedactPaths(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const bool starts = text[i] == '/' && (i == 0 || StartsWord(text[i - 1])) && i + 1 < text.size() &&
                        InPath(text[i + 1]) && text[i + 1] != '/';
    if (!starts) {
      out.push_back(text[i++]);
      continue;
    }
    size_t end = i + 1;
    while (end < text.size() && InPath(text[end])) ++end;
    while (end > i + 1 && (text[end - 1] == '.' || text[end - 1] == ':')) --end;  // The sentence's punctuation.
    out += "<path>";
    i = end;
  }
  return out;
}

grpc::Status ToPeerGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), RedactPaths(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view what) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(what, ": ", status.error_message()));
}

}  // namespace fedtune::net
