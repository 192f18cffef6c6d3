// What a site tells the consortium about its data (v1::DatasetSummary: image, study and patient counts, per-label
// value counts and the sizes of its patient-level split, the split of train::LoadSiteData). Counts only: no path,
// image or per-case value is ever put in a summary.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_SITE_AGENT_AGENT_DATASET_SUMMARY_H_
#define FEDTUNE_SITE_AGENT_AGENT_DATASET_SUMMARY_H_

#include "common/train/site_data.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::agent {

// The summary: images, studies, patients, 14 LabelCounts in CheXpert order (raw manifest values: 1.0 positive,
// 0.0 negative, -1.0 uncertain, blank) and train/validation/test image counts.
v1::DatasetSummary SummarizeDataset(const train::SiteData& site);

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_DATASET_SUMMARY_H_
