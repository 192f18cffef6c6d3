// Fuzzes the text-format config parser (io::ParseTextProto) on fedtune's four configuration messages; the first
// byte picks the message: CoordinatorConfig, SiteAgentConfig, FinetuneConfig or RunConfig. Besides crashes and
// sanitizer reports, it checks that errors are InvalidArgument with a bounded message, and that an accepted config
// prints back to text that parses and prints the same.
#include <google/protobuf/message.h>
#include <google/protobuf/text_format.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "common/io/text_proto.h"
#include "fedtune/v1/federation_config.pb.h"
#include "fedtune/v1/finetune.pb.h"

namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "text_proto_fuzz: %s\n", what.c_str());
  std::abort();
}

std::unique_ptr<google::protobuf::Message> NewConfig(uint8_t which) {
  switch (which % 4) {
    case 0:
      return std::make_unique<fedtune::v1::CoordinatorConfig>();
    case 1:
      return std::make_unique<fedtune::v1::SiteAgentConfig>();
    case 2:
      return std::make_unique<fedtune::v1::FinetuneConfig>();
    default:
      return std::make_unique<fedtune::v1::RunConfig>();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::unique_ptr<google::protobuf::Message> config = NewConfig(data[0]);
  const absl::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const absl::Status status = fedtune::io::ParseTextProto(text, "fuzz.textproto", config.get());
  if (!status.ok()) {
    if (status.code() != absl::StatusCode::kInvalidArgument) Fail(status.ToString());
    if (status.message().size() > 2 * fedtune::io::kMaxTextProtoErrorBytes + 100) Fail("unbounded error message");
    return 0;
  }
  std::string printed;
  if (!google::protobuf::TextFormat::PrintToString(*config, &printed)) Fail("cannot print an accepted config");
  if (printed.size() > fedtune::io::kMaxTextProtoBytes) return 0;  // Escaping can lengthen it past the limit.
  std::unique_ptr<google::protobuf::Message> again(config->New());
  const absl::Status reparsed = fedtune::io::ParseTextProto(printed, "printed.textproto", again.get());
  if (!reparsed.ok()) Fail("printed config does not parse: " + reparsed.ToString());
  // Compared as printed text: NaN != NaN, and "-nan" prints as "nan".
  std::string printed_again;
  if (!google::protobuf::TextFormat::PrintToString(*again, &printed_again) || printed_again != printed) {
    Fail("round trip changed the config");
  }
  return 0;
}
