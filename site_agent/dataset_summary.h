// What a site tells the consortium about its data (v1::DatasetSummary: image, study and patient counts, per-label
// value counts and the sizes of its patient-level split) and the site's split itself, computed exactly as
// RunFinetune computes it (same manifest, same SplitConfig), so that the final evaluation uses the same test split
// as the rounds. Counts only: no path, image or per-case value is ever put in a summary.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_SITE_AGENT_DATASET_SUMMARY_H_
#define FEDTUNE_SITE_AGENT_DATASET_SUMMARY_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/data/manifest.h"
#include "common/data/stratified_split.h"
#include "common/io/csv.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/finetune.pb.h"

namespace fedtune::agent {

// A site's manifest (as read: the table, for writing subsets with the original cells) and its split.
struct SiteData {
  io::CsvTable table;
  data::Manifest manifest;
  data::DatasetSplit split;
};

// Reads finetune.manifest and splits it with finetune.split as RunFinetune does. Errors: those of the CSV reader
// and manifest parser (naming the file and line) and of the split.
absl::StatusOr<SiteData> LoadSiteData(const v1::FinetuneConfig& finetune);

// The summary: images, studies, patients, 14 LabelCounts in CheXpert order (raw manifest values: 1.0 positive,
// 0.0 negative, -1.0 uncertain, blank) and train/validation/test image counts.
v1::DatasetSummary SummarizeDataset(const SiteData& site);

// Writes the manifest rows of `split` (with the header, cells as in the file) to `path`, atomically: the same file
// RunFinetune writes as <out_dir>/splits/<split>.csv. Errors of io::WriteFileAtomically.
absl::Status WriteSplitManifest(const SiteData& site, data::Split split, const std::string& path);

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_DATASET_SUMMARY_H_
