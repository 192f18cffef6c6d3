#include "common/model/checkpoint.h"

#include <ATen/core/Tensor.h>
#include <openssl/evp.h>

#include <cerrno>
#include <memory>
#include <nlohmann/json.hpp>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/data/chexpert_labels.h"
#include "common/io/file_util.h"
#include "common/io/json_number.h"
#include "common/model/torch_archive.h"
#include "common/status_macros.h"

namespace fedtune::model {
namespace {

using nlohmann::json;

constexpr char kFormat[] = "fedtune.checkpoint";
constexpr int kVersion = 1;

const char* DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "F32";
    case at::kHalf:
      return "F16";
    case at::kBFloat16:
      return "BF16";
    case at::kDouble:
      return "F64";
    case at::kLong:
      return "I64";
    case at::kInt:
      return "I32";
    case at::kShort:
      return "I16";
    case at::kChar:
      return "I8";
    case at::kByte:
      return "U8";
    case at::kBool:
      return "BOOL";
    default:
      return "?";
  }
}

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) { EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr); }
  void Update(const void* data, size_t n) { EVP_DigestUpdate(ctx_.get(), data, n); }
  void Update(const std::string& s) { Update(s.data(), s.size()); }
  std::string HexDigest() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx_.get(), md, &n);
    static const char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned int k = 0; k < n; ++k) {
      out += kHex[md[k] >> 4];
      out += kHex[md[k] & 15];
    }
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

void HashSection(Sha256& sha, const std::string& section, const StateDict& weights) {
  for (const auto& [key, tensor] : weights) {  // std::map: byte order of keys.
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    sha.Update(
        absl::StrCat(section, "\n", key, "\n", DtypeName(t.scalar_type()), "\n", absl::StrJoin(t.sizes(), ","), "\n"));
    sha.Update(t.data_ptr(), t.nbytes());
  }
}

json ConfigJson(const ModelConfig& c) { return json::parse(ModelConfigToJson(c)); }

absl::StatusOr<ModelConfig> ConfigFromJson(const json& j, const std::string& where) {
  auto config = ModelConfigFromJson(j.dump());
  if (!config.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", config.status().message()));
  return config;
}

PickleValuePtr StateDictValue(const StateDict& weights) {
  PickleValuePtr dict = PickleValue::Dict();
  for (const auto& [key, tensor] : weights) dict->AddEntry(key, PickleValue::Tensor(tensor));
  return dict;
}

absl::StatusOr<StateDict> StateDictFromValue(const PickleValue* value, const std::string& where) {
  if (value == nullptr || value->kind != PickleValue::Kind::kDict) {
    return absl::InvalidArgumentError(absl::StrCat(where, " is not a dict of tensors"));
  }
  StateDict out;
  for (const auto& [k, v] : value->entries) {
    if (k->kind != PickleValue::Kind::kString || v->kind != PickleValue::Kind::kTensor) {
      return absl::InvalidArgumentError(absl::StrCat(where, " holds a non-tensor entry"));
    }
    out[k->s] = v->tensor;
  }
  return out;
}

}  // namespace

CheckpointMetadata::CheckpointMetadata() : labels(data::kChexpertLabels.begin(), data::kChexpertLabels.end()) {}

std::string WeightsDigest(const Checkpoint& checkpoint) {
  Sha256 sha;
  for (size_t i = 0; i < checkpoint.members.size(); ++i) {
    HashSection(sha, absl::StrCat("member", i), checkpoint.members[i].weights);
  }
  if (checkpoint.duo) HashSection(sha, "duo", checkpoint.duo->weights);
  return sha.HexDigest();
}

absl::StatusOr<std::string> SaveCheckpoint(Checkpoint* checkpoint, const std::string& path) {
  if (checkpoint->members.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, ": no ensemble members"));
  }
  const CheckpointMetadata& m = checkpoint->metadata;
  json meta;
  meta["labels"] = m.labels;
  meta["image_size"] = m.image_size;
  meta["normalization"] = {{"mean", m.mean}, {"std", m.std}};
  meta["provenance"] = {{"parent_digest", m.provenance.parent_digest},
                        {"source", m.provenance.source},
                        {"data_summary", m.provenance.data_summary},
                        {"epochs", m.provenance.epochs},
                        {"created_at", m.provenance.created_at}};
  meta["members"] = json::array();
  for (const auto& member : checkpoint->members) {
    RETURN_IF_ERROR(ValidateModelConfig(member.config));
    meta["members"].push_back(ConfigJson(member.config));
  }
  if (checkpoint->duo) {
    RETURN_IF_ERROR(ValidateModelConfig(checkpoint->duo->frontal));
    RETURN_IF_ERROR(ValidateModelConfig(checkpoint->duo->lateral));
    meta["duo"] = {{"frontal", ConfigJson(checkpoint->duo->frontal)},
                   {"lateral", ConfigJson(checkpoint->duo->lateral)},
                   {"num_outputs", checkpoint->duo->num_outputs},
                   {"head_dropout", checkpoint->duo->head_dropout}};
  }
  checkpoint->weights_sha256 = WeightsDigest(*checkpoint);
  meta["weights_sha256"] = checkpoint->weights_sha256;

  PickleValue root;
  root.kind = PickleValue::Kind::kDict;
  root.AddEntry("format", PickleValue::String(kFormat));
  root.AddEntry("version", PickleValue::Int(kVersion));
  root.AddEntry("metadata", PickleValue::String(meta.dump(2)));
  std::vector<PickleValuePtr> members;
  for (const auto& member : checkpoint->members) members.push_back(StateDictValue(member.weights));
  root.AddEntry("members", PickleValue::List(std::move(members)));
  if (checkpoint->duo) root.AddEntry("duo", StateDictValue(checkpoint->duo->weights));
  // Straight into a temporary file beside `path` (no copy of the model in memory), synced, then renamed over it.
  RETURN_IF_ERROR(io::WriteFileAtomicallyWith(path, [&](const io::ByteSink& sink) -> absl::Status {
    absl::Status archive = WriteTorchArchive(root, sink);
    if (!archive.ok()) {
      return absl::Status(archive.code(), absl::StrCat("checkpoint ", path, ": ", archive.message()));
    }
    return absl::OkStatus();
  }));
  return checkpoint->weights_sha256;
}

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, io::ReadFile(path));
  auto root_or = ReadTorchArchive(bytes, path);
  if (!root_or.ok()) {
    // A zip that does not read back is a damaged file; anything else is not a checkpoint at all. Running out of
    // memory says nothing about the file.
    const bool zip = bytes.size() >= 4 && bytes.compare(0, 4, "PK\3\4", 4) == 0;
    const absl::StatusCode code = root_or.status().code() == absl::StatusCode::kResourceExhausted
                                      ? absl::StatusCode::kResourceExhausted
                                  : zip ? absl::StatusCode::kDataLoss
                                        : absl::StatusCode::kInvalidArgument;
    return absl::Status(code, absl::StrCat("checkpoint: ", root_or.status().message()));
  }
  const PickleValue& root = **root_or;
  auto bad = [&path](const auto&... args) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, ": ", args...));
  };
  if (root.kind != PickleValue::Kind::kDict) return bad("not a fedtune checkpoint (top level is not a dict)");
  const PickleValue* format = root.Find("format");
  if (format == nullptr || format->kind != PickleValue::Kind::kString || format->s != kFormat) {
    return bad("not a fedtune checkpoint (missing \"format\": \"", kFormat, "\")");
  }
  const PickleValue* version = root.Find("version");
  if (version == nullptr || version->kind != PickleValue::Kind::kInt || version->i != kVersion) {
    return bad("unsupported checkpoint version (this fedtune reads version ", kVersion, ")");
  }
  const PickleValue* meta_text = root.Find("metadata");
  if (meta_text == nullptr || meta_text->kind != PickleValue::Kind::kString) return bad("missing metadata");
  json meta = json::parse(meta_text->s, nullptr, false);
  if (meta.is_discarded() || !meta.is_object()) return bad("metadata is not a JSON object");

  Checkpoint checkpoint;
  CheckpointMetadata& m = checkpoint.metadata;
  try {
    m.labels = meta.at("labels").get<std::vector<std::string>>();
    // Integers through io::JsonInteger: get<int>() of a float that does not fit is undefined behaviour.
    absl::StatusOr<int64_t> image_size = io::JsonInteger(meta.at("image_size"), "metadata image_size", 1, 1 << 16);
    if (!image_size.ok()) return bad(image_size.status().message());
    m.image_size = static_cast<int>(*image_size);
    m.mean = meta.at("normalization").at("mean").get<std::vector<double>>();
    m.std = meta.at("normalization").at("std").get<std::vector<double>>();
    const json& p = meta.at("provenance");
    m.provenance.parent_digest = p.value("parent_digest", "");
    m.provenance.source = p.value("source", "");
    m.provenance.data_summary = p.value("data_summary", "");
    if (p.contains("epochs")) {
      absl::StatusOr<int64_t> epochs = io::JsonInteger(p.at("epochs"), "provenance epochs", 0, 1 << 30);
      if (!epochs.ok()) return bad(epochs.status().message());
      m.provenance.epochs = static_cast<int>(*epochs);
    }
    m.provenance.created_at = p.value("created_at", "");
    checkpoint.weights_sha256 = meta.at("weights_sha256").get<std::string>();
    const PickleValue* members = root.Find("members");
    if (members == nullptr || members->kind != PickleValue::Kind::kList) return bad("missing \"members\" list");
    const json& configs = meta.at("members");
    if (!configs.is_array() || configs.size() != members->items.size() || configs.empty()) {
      return bad("metadata lists ", configs.size(), " members, the weights ", members->items.size());
    }
    for (size_t i = 0; i < configs.size(); ++i) {
      MemberWeights member;
      ASSIGN_OR_RETURN(member.config,
                       ConfigFromJson(configs[i], absl::StrCat("checkpoint ", path, ": members[", i, "]")));
      auto weights =
          StateDictFromValue(members->items[i].get(), absl::StrCat("checkpoint ", path, ": members[", i, "]"));
      if (!weights.ok()) return weights.status();
      member.weights = std::move(*weights);
      checkpoint.members.push_back(std::move(member));
    }
    if (meta.contains("duo")) {
      const json& d = meta.at("duo");
      DuoWeights duo;
      ASSIGN_OR_RETURN(duo.frontal,
                       ConfigFromJson(d.at("frontal"), absl::StrCat("checkpoint ", path, ": duo.frontal")));
      ASSIGN_OR_RETURN(duo.lateral,
                       ConfigFromJson(d.at("lateral"), absl::StrCat("checkpoint ", path, ": duo.lateral")));
      absl::StatusOr<int64_t> outputs = io::JsonInteger(d.at("num_outputs"), "duo num_outputs", 1, 1 << 16);
      if (!outputs.ok()) return bad(outputs.status().message());
      duo.num_outputs = static_cast<int>(*outputs);
      duo.head_dropout = d.at("head_dropout").get<double>();
      ASSIGN_OR_RETURN(duo.weights, StateDictFromValue(root.Find("duo"), absl::StrCat("checkpoint ", path, ": duo")));
      checkpoint.duo = std::move(duo);
    }
  } catch (const json::exception& e) {
    return bad("malformed metadata: ", e.what());
  }
  if (m.mean.size() != m.std.size() || m.mean.empty()) return bad("normalization mean and std differ in length");
  const std::string digest = WeightsDigest(checkpoint);
  if (digest != checkpoint.weights_sha256) {
    return absl::DataLossError(absl::StrCat("checkpoint ", path, ": weights digest mismatch (stored ",
                                            checkpoint.weights_sha256, ", computed ", digest, ")"));
  }
  return checkpoint;
}

std::string CheckpointSummary(const Checkpoint& c) {
  std::string s;
  for (size_t i = 0; i < c.members.size(); ++i) {
    int64_t n = 0;
    for (const auto& [key, t] : c.members[i].weights) n += t.numel();
    absl::StrAppend(&s, "member ", i, ": ", ModelConfigToJson(c.members[i].config), " (", n, " values)\n");
  }
  if (c.duo) {
    absl::StrAppend(&s, "duo: frontal ", ArchitectureName(c.duo->frontal.arch), ", lateral ",
                    ArchitectureName(c.duo->lateral.arch), ", ", c.duo->num_outputs, " outputs\n");
  }
  const CheckpointMetadata& m = c.metadata;
  absl::StrAppend(&s, "labels: ", absl::StrJoin(m.labels, ", "), "\n");
  absl::StrAppend(&s, "image size: ", m.image_size, "; normalization mean ", absl::StrJoin(m.mean, ","), " std ",
                  absl::StrJoin(m.std, ","), "\n");
  absl::StrAppend(&s, "provenance: source '", m.provenance.source, "', parent ",
                  m.provenance.parent_digest.empty() ? "none" : m.provenance.parent_digest, ", epochs ",
                  m.provenance.epochs, ", data '", m.provenance.data_summary, "', created ", m.provenance.created_at,
                  "\n");
  absl::StrAppend(&s, "weights sha256: ", c.weights_sha256, "\n");
  return s;
}

}  // namespace fedtune::model
