// Text-format protobuf configs (fedtune's *.textproto files): parsing with the position of the first error, and
// paths in a config resolved against the config file's directory.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_COMMON_IO_TEXT_PROTO_H_
#define FEDTUNE_COMMON_IO_TEXT_PROTO_H_

#include <google/protobuf/message.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace fedtune::io {

// Parses `text` into *message (cleared first). InvalidArgument "SOURCE:LINE:COLUMN: problem" (1-based) for the
// first syntax error, unknown field or bad value; "SOURCE: not a valid <message type>" when protobuf gives no
// position.
absl::Status ParseTextProto(absl::string_view text, absl::string_view source, google::protobuf::Message* message);

// `path` relative to `base_dir` (lexically normalized), unless `path` is empty or absolute, or `base_dir` is empty.
std::string ResolveConfigPath(const std::string& base_dir, const std::string& path);

}  // namespace fedtune::io

#endif  // FEDTUNE_COMMON_IO_TEXT_PROTO_H_
