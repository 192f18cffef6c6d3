// A small CheXpert-format site manifest for tests of the site's data handling (split, summary, split manifests).
#ifndef FEDTUNE_TESTS_TESTING_SITE_MANIFEST_H_
#define FEDTUNE_TESTS_TESTING_SITE_MANIFEST_H_

#include <string>

#include "absl/strings/str_cat.h"
#include "common/data/chexpert_labels.h"
#include "fedtune/v1/finetune.pb.h"

namespace fedtune::testing {

// 20 patients, one frontal image each; label 0 (No Finding) positive for even patients, label 2 uncertain for
// patients divisible by 5, the other labels blank.
inline std::string TwentyPatientManifest() {
  std::string csv = "Path,Sex,Age,Frontal/Lateral,AP/PA";
  for (const char* label : data::kChexpertLabels) absl::StrAppend(&csv, ",", label);
  csv += "\n";
  for (int p = 1; p <= 20; ++p) {
    absl::StrAppend(&csv, "patient", 10000 + p, "/study1/view1_frontal.png,Male,50,Frontal,PA");
    for (int l = 0; l < data::kNumChexpertLabels; ++l) {
      std::string cell;
      if (l == 0) cell = p % 2 == 0 ? "1.0" : "0.0";
      if (l == 2 && p % 5 == 0) cell = "-1.0";
      absl::StrAppend(&csv, ",", cell);
    }
    csv += "\n";
  }
  return csv;
}

// A fine-tuning config of that manifest (at `manifest_path`), split 0.6 / 0.2 / 0.2 by patient.
inline v1::FinetuneConfig TwentyPatientConfig(const std::string& manifest_path) {
  v1::FinetuneConfig config;
  config.set_manifest(manifest_path);
  config.mutable_split()->set_train(0.6);
  config.mutable_split()->set_validation(0.2);
  config.mutable_split()->set_test(0.2);
  return config;
}

}  // namespace fedtune::testing

#endif  // FEDTUNE_TESTS_TESTING_SITE_MANIFEST_H_
