#include "coordinator/cli/consortium_reference.h"

#include <cmath>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/cli/consortium_report.h"
#include "coordinator/cli/consortium_view.h"
#include "coordinator/cli/report_format.h"
#include "coordinator/cli/text_table.h"

namespace fedtune::admin::consortium {
namespace {

using Json = nlohmann::ordered_json;

Json Num(std::optional<double> value) { return value && std::isfinite(*value) ? Json(*value) : Json(nullptr); }

std::optional<double> Difference(std::optional<double> a, std::optional<double> b) {
  if (!a || !b) return std::nullopt;
  return *a - *b;
}

std::string Signed(std::optional<double> d) { return d ? absl::StrFormat("%+.3f", *d) : "n/a"; }

std::string PrivacySetting(const v1::RunConfig& config) {
  const std::string dp = config.dp().empty() ? "none" : config.dp();
  std::string text = absl::StrCat("dp ", dp);
  if (dp != "none") {
    absl::StrAppend(
        &text, absl::StrFormat(" (noise multiplier %g, clip %g)", config.dp_noise_multiplier(), config.dp_clip_norm()));
  }
  absl::StrAppend(&text, ", secure aggregation ", config.secure_aggregation() ? "on" : "off");
  return text;
}

std::string RunSetting(const v1::RunStatus& status) {
  return absl::StrCat(status.config().rounds(), " rounds x ", status.config().local_epochs(), " local epoch(s), ",
                      status.config().aggregation(), ", ", PrivacySetting(status.config()));
}

}  // namespace

ReferenceView ReferenceOf(const v1::RunReport& report, const v1::RunReport& reference) {
  ReferenceView view;
  view.reference = &reference.status();
  std::map<std::string, SiteSummary> theirs;
  for (SiteSummary& s : SummarizeSites(reference)) theirs[s.site_id] = std::move(s);
  const std::vector<SiteView> views = ViewsOf(report);
  const PrivacyView privacy = PrivacyOf(report, views);
  std::map<std::string, const SitePrivacy*> accounts;
  for (const SitePrivacy& p : privacy.sites) accounts[p.site_id] = &p;
  for (const SiteSummary& s : SummarizeSites(report)) {
    ReferenceRow row;
    row.site_id = s.site_id;
    row.global = s.mean_auc_global;
    row.adapted = s.mean_auc_adapted;
    auto it = theirs.find(s.site_id);
    if (it != theirs.end()) {
      row.reference_global = it->second.mean_auc_global;
      row.reference_adapted = it->second.mean_auc_adapted;
    }
    auto a = accounts.find(s.site_id);
    if (a != accounts.end() && a->second->account != nullptr) {
      row.non_private = a->second->non_private();
      if (!row.non_private) row.epsilon = a->second->account->epsilon();
    }
    view.rows.push_back(std::move(row));
  }
  return view;
}

Json ReferenceJson(const ReferenceView& view) {
  Json out;
  const v1::RunStatus& r = *view.reference;
  out["run_id"] = r.run_id();
  out["name"] = r.name();
  out["state"] = r.state();
  out["rounds"] = r.config().rounds();
  out["local_epochs"] = r.config().local_epochs();
  out["dp"] = r.config().dp().empty() ? "none" : r.config().dp();
  out["secure_aggregation"] = r.config().secure_aggregation();
  Json sites = Json::array();
  for (const ReferenceRow& row : view.rows) {
    Json s;
    s["site_id"] = row.site_id;
    s["epsilon"] = Num(row.epsilon);
    s["non_private_training"] = row.non_private;
    s["mean_auc"] = {{"global", Num(row.global)}, {"adapted", Num(row.adapted)}};
    s["reference_mean_auc"] = {{"global", Num(row.reference_global)}, {"adapted", Num(row.reference_adapted)}};
    s["difference"] = {{"global", Num(Difference(row.global, row.reference_global))},
                       {"adapted", Num(Difference(row.adapted, row.reference_adapted))}};
    sites.push_back(std::move(s));
  }
  out["sites"] = std::move(sites);
  return out;
}

std::string ReferenceHtml(const v1::RunStatus& status, const ReferenceView& view) {
  const v1::RunStatus& r = *view.reference;
  std::string html = absl::StrCat(
      "<h2>Against the reference run</h2>\n<p class=\"note\">This run (", HtmlEscape(RunSetting(status)),
      ") next to the reference run <code>", HtmlEscape(r.run_id()), "</code> ", HtmlEscape(r.name()), " (",
      HtmlEscape(RunSetting(r)),
      "): mean AUC of the final global and adapted models in each site's final evaluation, and what the site "
      "spent of its privacy budget in this run.</p>\n<table>\n<tr><th>site</th><th>epsilon spent</th>"
      "<th>global (this run)</th><th>global (reference)</th><th>difference</th><th>adapted (this run)</th>"
      "<th>adapted (reference)</th><th>difference</th></tr>\n");
  for (const ReferenceRow& row : view.rows) {
    const std::string eps = row.non_private ? "&infin; (non-private)" : HtmlEscape(FormatEpsilon(row.epsilon));
    absl::StrAppend(&html, "<tr><td>", HtmlEscape(row.site_id), "</td><td>", eps, "</td><td>",
                    HtmlEscape(FormatAuc(row.global)), "</td><td>", HtmlEscape(FormatAuc(row.reference_global)),
                    "</td><td>", HtmlEscape(Signed(Difference(row.global, row.reference_global))), "</td><td>",
                    HtmlEscape(FormatAuc(row.adapted)), "</td><td>", HtmlEscape(FormatAuc(row.reference_adapted)),
                    "</td><td>", HtmlEscape(Signed(Difference(row.adapted, row.reference_adapted))), "</td></tr>\n");
  }
  absl::StrAppend(&html, "</table>\n");
  return html;
}

std::string ReferenceText(const v1::RunStatus& status, const ReferenceView& view) {
  const v1::RunStatus& r = *view.reference;
  TextTable table(
      {"site", "epsilon", "global: this run", "reference", "diff", "adapted: this run", "reference", "diff"},
      {false, true, true, true, true, true, true, true});
  for (const ReferenceRow& row : view.rows) {
    table.AddRow({row.site_id, row.non_private ? FormatEpsilon(INFINITY) : FormatEpsilon(row.epsilon),
                  FormatAuc(row.global), FormatAuc(row.reference_global),
                  Signed(Difference(row.global, row.reference_global)), FormatAuc(row.adapted),
                  FormatAuc(row.reference_adapted), Signed(Difference(row.adapted, row.reference_adapted))});
  }
  return absl::StrCat("Against reference run ", r.run_id(), " (", RunSetting(r), "); this run: ", RunSetting(status),
                      "\n", table.Render());
}

}  // namespace fedtune::admin::consortium
