#include "common/io/text_proto.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <sys/stat.h>

#include <cerrno>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"

namespace fedtune::io {
namespace {

// Keeps the first error with its position: protobuf's default collector only logs.
class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    // Lines and columns are zero-based in protobuf. Its messages quote the
    // offending token, which may be a 1 MiB string.
    if (!error_.empty()) return;
    error_ = absl::StrCat(line + 1, ":", column + 1, ": ", message.substr(0, kMaxTextProtoErrorBytes));
    if (message.size() > kMaxTextProtoErrorBytes) absl::StrAppend(&error_, "... (", message.size(), " bytes)");
  }
  void AddWarning(int, google::protobuf::io::ColumnNumber, const std::string&) override {}
  const std::string& error() const { return error_; }

 private:
  std::string error_;
};

}  // namespace

absl::Status ParseTextProto(absl::string_view text, absl::string_view source, google::protobuf::Message* message) {
  message->Clear();
  if (text.size() > kMaxTextProtoBytes) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", text.size(), " bytes, above the limit of ",
                                                   kMaxTextProtoBytes, " bytes for a config"));
  }
  google::protobuf::TextFormat::Parser parser;
  parser.SetRecursionLimit(kMaxTextProtoNesting);
  FirstErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(std::string(text), message)) {
    return absl::InvalidArgumentError(errors.error().empty()
                                          ? absl::StrCat(source, ": not a valid ", message->GetTypeName())
                                          : absl::StrCat(source, ":", errors.error()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTextProtoFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "cannot open", path);
  if (!S_ISDIR(st.st_mode)) {
    if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
    if (static_cast<size_t>(st.st_size) > kMaxTextProtoBytes) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": file of ", st.st_size, " bytes, above the limit of ",
                                                     kMaxTextProtoBytes, " bytes for a config"));
    }
  }
  // Directories: ReadFile's error. A file grown since it was measured is
  // refused by ParseTextProto.
  return ReadFile(path);
}

std::string ResolveConfigPath(const std::string& base_dir, const std::string& path) {
  if (path.empty() || std::filesystem::path(path).is_absolute() || base_dir.empty()) return path;
  return (std::filesystem::path(base_dir) / path).lexically_normal().string();
}

}  // namespace fedtune::io
