#include "site_agent/dataset_summary.h"

#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/data/chexpert_labels.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::agent {

absl::StatusOr<SiteData> LoadSiteData(const v1::FinetuneConfig& finetune) {
  SiteData site;
  ASSIGN_OR_RETURN(site.table, io::ReadCsvFile(finetune.manifest()));
  ASSIGN_OR_RETURN(site.manifest, data::Manifest::FromTable(site.table));
  // The same options as RunFinetune (site_agent/finetune.cc), so the splits agree.
  data::SplitOptions options;
  options.train = finetune.split().train();
  options.validation = finetune.split().validation();
  options.test = finetune.split().test();
  options.seed = finetune.split().seed();
  options.method = finetune.split().method() == "random" ? data::SplitMethod::kRandom : data::SplitMethod::kIterative;
  ASSIGN_OR_RETURN(site.split, data::SplitByPatient(site.manifest, options));
  return site;
}

v1::DatasetSummary SummarizeDataset(const SiteData& site) {
  v1::DatasetSummary summary;
  summary.set_images(static_cast<int64_t>(site.manifest.entries().size()));
  summary.set_studies(static_cast<int64_t>(site.manifest.studies().size()));
  summary.set_patients(static_cast<int64_t>(site.manifest.patients().size()));
  const auto counts = data::CountLabelValues(site.manifest.entries());
  for (int l = 0; l < data::kNumChexpertLabels; ++l) {
    v1::LabelCount* label = summary.add_labels();
    label->set_label(data::kChexpertLabels[l]);
    label->set_positive(counts[l].positive);
    label->set_negative(counts[l].negative);
    label->set_uncertain(counts[l].uncertain);
    label->set_blank(counts[l].blank);
  }
  summary.set_train_images(static_cast<int64_t>(site.split.EntriesIn(data::Split::kTrain).size()));
  summary.set_validation_images(static_cast<int64_t>(site.split.EntriesIn(data::Split::kValidation).size()));
  summary.set_test_images(static_cast<int64_t>(site.split.EntriesIn(data::Split::kTest).size()));
  return summary;
}

absl::Status WriteSplitManifest(const SiteData& site, data::Split split, const std::string& path) {
  std::set<int64_t> lines;
  for (size_t e : site.split.EntriesIn(split)) lines.insert(site.manifest.entries()[e].line);
  std::string out;
  for (size_t i = 0; i < site.table.header.size(); ++i) {
    absl::StrAppend(&out, i ? "," : "", io::CsvEscape(site.table.header[i]));
  }
  out += "\n";
  for (const io::CsvRecord& row : site.table.rows) {
    if (!lines.count(row.line)) continue;
    for (size_t i = 0; i < row.fields.size(); ++i) absl::StrAppend(&out, i ? "," : "", io::CsvEscape(row.fields[i]));
    out += "\n";
  }
  return io::WriteFileAtomically(path, out);
}

}  // namespace fedtune::agent
