// Text-format protobuf configs (fedtune's *.textproto files): parsing with the position of the first error, and
// paths in a config resolved against the config file's directory.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_COMMON_IO_TEXT_PROTO_H_
#define FEDTUNE_COMMON_IO_TEXT_PROTO_H_

#include <google/protobuf/message.h>

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::io {

// Limits on config text, an input that may come from anywhere a config file can be written. fedtune's configs are a
// few KB and nest at most three messages deep.
//   - kMaxTextProtoBytes: longer text is refused unparsed (1 MiB).
//   - kMaxTextProtoNesting: deeper nesting of messages is a parse error (32), whatever the schema allows.
//   - Parser messages quote at most kMaxTextProtoErrorBytes of the offending text (256).
inline constexpr size_t kMaxTextProtoBytes = 1 << 20;
inline constexpr int kMaxTextProtoNesting = 32;
inline constexpr size_t kMaxTextProtoErrorBytes = 256;

// Parses `text` into *message (cleared first). InvalidArgument "SOURCE:LINE:COLUMN: problem" (1-based) for the
// first syntax error, unknown field or bad value; "SOURCE: not a valid <message type>" when protobuf gives no
// position; "SOURCE: N bytes, above the limit ..." for text longer than kMaxTextProtoBytes.
absl::Status ParseTextProto(absl::string_view text, absl::string_view source, google::protobuf::Message* message);

// Reads a config file for ParseTextProto. NotFound / PermissionDenied as io::ReadFile; InvalidArgument naming the
// path for a directory, anything but a regular file (a FIFO or device would never end), or a file longer than
// kMaxTextProtoBytes (refused unread).
absl::StatusOr<std::string> ReadTextProtoFile(const std::string& path);

// `path` relative to `base_dir` (lexically normalized), unless `path` is empty or absolute, or `base_dir` is empty.
std::string ResolveConfigPath(const std::string& base_dir, const std::string& path);

}  // namespace fedtune::io

#endif  // FEDTUNE_COMMON_IO_TEXT_PROTO_H_
