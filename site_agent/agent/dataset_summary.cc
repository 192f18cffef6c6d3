#include "site_agent/agent/dataset_summary.h"

#include "common/data/chexpert_labels.h"

namespace fedtune::agent {

v1::DatasetSummary SummarizeDataset(const train::SiteData& site) {
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

}  // namespace fedtune::agent
