#include "coordinator/cli/run_config.h"

#include <cmath>
#include <set>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/io/file_util.h"
#include "common/io/text_proto.h"
#include "common/status_macros.h"
#include "coordinator/run_config_privacy.h"

namespace fedtune::admin {
namespace {

// Keeps the first error with its position: protobuf's default collector only logs.

absl::Status FieldError(absl::string_view field, absl::string_view value, absl::string_view requirement) {
  return absl::InvalidArgumentError(absl::StrCat("run config field '", field, "' is ", value, ": ", requirement));
}

absl::Status AtLeastOne(absl::string_view field, int64_t value) {
  if (value >= 1) return absl::OkStatus();
  return FieldError(field, absl::StrCat(value), "must be at least 1");
}

absl::Status Finite(absl::string_view field, double value) {
  if (std::isfinite(value)) return absl::OkStatus();
  return FieldError(field, absl::StrCat(value), "must be a finite number");
}

template <size_t N>
absl::Status OneOf(absl::string_view field, const std::string& value, const char* const (&names)[N]) {
  for (const char* name : names) {
    if (value == name) return absl::OkStatus();
  }
  return FieldError(field, absl::StrCat("'", value, "'"), absl::StrCat("must be one of ", absl::StrJoin(names, ", ")));
}

bool IsLowerHex(absl::string_view text) {
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<v1::RunConfig> ParseRunConfig(absl::string_view text, absl::string_view source) {
  v1::RunConfig config;
  RETURN_IF_ERROR(io::ParseTextProto(text, source, &config));
  return config;
}

absl::StatusOr<v1::RunConfig> ReadRunConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, io::ReadTextProtoFile(path));
  return ParseRunConfig(text, path);
}

absl::Status ValidateRunConfig(const v1::RunConfig& c) {
  RETURN_IF_ERROR(AtLeastOne("rounds", c.rounds()));
  RETURN_IF_ERROR(AtLeastOne("min_sites", c.min_sites()));
  RETURN_IF_ERROR(AtLeastOne("round_deadline_seconds", c.round_deadline_seconds()));
  RETURN_IF_ERROR(AtLeastOne("max_round_attempts", c.max_round_attempts()));
  RETURN_IF_ERROR(AtLeastOne("local_epochs", c.local_epochs()));
  RETURN_IF_ERROR(AtLeastOne("batch_size", c.batch_size()));
  RETURN_IF_ERROR(Finite("learning_rate", c.learning_rate()));
  if (!(c.learning_rate() > 0)) {
    return FieldError("learning_rate", absl::StrCat(c.learning_rate()), "must be greater than 0");
  }
  RETURN_IF_ERROR(OneOf("aggregation", c.aggregation(), kAggregations));
  RETURN_IF_ERROR(Finite("proximal_mu", c.proximal_mu()));
  if (c.proximal_mu() < 0) return FieldError("proximal_mu", absl::StrCat(c.proximal_mu()), "must be at least 0");
  RETURN_IF_ERROR(Finite("server_learning_rate", c.server_learning_rate()));
  if (!(c.server_learning_rate() > 0)) {
    return FieldError("server_learning_rate", absl::StrCat(c.server_learning_rate()), "must be greater than 0");
  }
  RETURN_IF_ERROR(Finite("trim_fraction", c.trim_fraction()));
  if (c.trim_fraction() < 0 || c.trim_fraction() >= 0.5) {
    return FieldError("trim_fraction", absl::StrCat(c.trim_fraction()), "must be in [0, 0.5)");
  }
  RETURN_IF_ERROR(Finite("clip_norm", c.clip_norm()));
  if (c.clip_norm() < 0) return FieldError("clip_norm", absl::StrCat(c.clip_norm()), "must be at least 0 (0 = off)");
  RETURN_IF_ERROR(Finite("max_update_norm", c.max_update_norm()));
  if (c.max_update_norm() < 0) {
    return FieldError("max_update_norm", absl::StrCat(c.max_update_norm()), "must be at least 0 (0 = off)");
  }
  RETURN_IF_ERROR(OneOf("compression", c.compression(), kCompressions));
  RETURN_IF_ERROR(Finite("topk_fraction", c.topk_fraction()));
  if (!(c.topk_fraction() > 0 && c.topk_fraction() <= 1)) {
    return FieldError("topk_fraction", absl::StrCat(c.topk_fraction()), "must be in (0, 1]");
  }
  std::set<std::string> seen;
  for (int i = 0; i < c.sites_size(); ++i) {
    const std::string& site = c.sites(i);
    const std::string field = absl::StrCat("sites[", i, "]");
    if (site.empty()) return FieldError(field, "empty", "must be a site id");
    for (char ch : site) {
      if (absl::ascii_isspace(static_cast<unsigned char>(ch)) || absl::ascii_iscntrl(static_cast<unsigned char>(ch))) {
        return FieldError(field, absl::StrCat("'", site, "'"), "must not contain whitespace or control characters");
      }
    }
    if (!seen.insert(site).second) return FieldError(field, absl::StrCat("'", site, "'"), "is listed twice");
  }
  if (c.sites_size() > 0 && c.min_sites() > c.sites_size()) {
    return FieldError("min_sites", absl::StrCat(c.min_sites()),
                      absl::StrCat("is more than the ", c.sites_size(), " site(s) listed in 'sites'"));
  }
  if (c.cross_site_evaluation() && !c.final_evaluation()) {
    return FieldError("cross_site_evaluation", "true", "needs final_evaluation: true");
  }
  if (c.local_only_baseline() && !c.final_evaluation()) {
    return FieldError("local_only_baseline", "true", "needs final_evaluation: true");
  }
  RETURN_IF_ERROR(Finite("ditto_lambda", c.ditto_lambda()));
  if (c.personalization() == v1::RunConfig::DITTO && !(c.ditto_lambda() > 0)) {
    return FieldError("ditto_lambda", absl::StrCat(c.ditto_lambda()),
                      "must be greater than 0 with personalization DITTO");
  }
  if (c.local_only_epochs() < 0 || c.local_only_epochs() > 1000) {
    return FieldError("local_only_epochs", absl::StrCat(c.local_only_epochs()),
                      "must be in [0, 1000] (0: rounds x local_epochs)");
  }
  if (c.local_only_baseline() && c.local_only_epochs() == 0 && int64_t{c.rounds()} * c.local_epochs() > 1000) {
    return FieldError("local_only_epochs", "0", "means rounds x local_epochs, which is over 1000: set it");
  }
  if (!c.base_model().empty() &&
      (c.base_model().size() < 8 || c.base_model().size() > 64 || !IsLowerHex(c.base_model()))) {
    return FieldError("base_model", absl::StrCat("'", c.base_model(), "'"),
                      "must be a model digest (8 to 64 lowercase hex digits)");
  }
  // The privacy fields: one definition with the coordinator's own check (coordinator/run_config_privacy.h).
  return coordinator::ValidatePrivacyConfig(c);
}

}  // namespace fedtune::admin
