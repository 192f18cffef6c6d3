// CheXpert-format manifests from public chest-radiograph collections' own tables, for `fedtune-site data index
// --format mimic-cxr|nih-cxr14` (common/data/index_command.h). The output rows go to manifest_writer.h, so that
// everything downstream reads them as any manifest.
//
// CONTRACT BEING IMPLEMENTED (issue 17): the implementation in public_collections.cc is written by the
// public-collections work; until then IndexPublicCollection returns Unimplemented.
#ifndef FEDTUNE_COMMON_DATA_PUBLIC_COLLECTIONS_H_
#define FEDTUNE_COMMON_DATA_PUBLIC_COLLECTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/data/manifest_writer.h"

namespace fedtune::data {

enum class PublicCollection {
  kMimicCxr,  // MIMIC-CXR (DICOM) or MIMIC-CXR-JPG: labels from the CheXpert (or NegBio) labeller.
  kNihCxr14,  // NIH ChestX-ray14: Data_Entry_2017.csv.
};

struct PublicCollectionOptions {
  PublicCollection collection = PublicCollection::kMimicCxr;
  // The labels table: mimic-cxr-2.0.0-chexpert.csv or -negbio.csv (MIMIC-CXR); Data_Entry_2017.csv (NIH).
  std::string labels_csv;
  // MIMIC-CXR only: mimic-cxr-2.0.0-metadata.csv (view position per image).
  std::string metadata_csv;
  // MIMIC-CXR: mimic-cxr-2.0.0-split.csv; NIH: a list of image names (train_val_list.txt or test_list.txt). Empty:
  // no split filter.
  std::string split_file;
  // MIMIC-CXR: which split of split_file to keep ("train", "validate", "test"); empty = all rows.
  std::string split;
  // MIMIC-CXR: the image files' kind, "dicom" (files/pNN/pSUBJECT/sSTUDY/DICOM_ID.dcm) or "jpg" (.jpg).
  std::string image_kind = "dicom";
  // Prepended to every image path (relative, '/'-separated), e.g. "images/" for NIH.
  std::string path_prefix;
};

// What the conversion found, for the command to print.
struct PublicCollectionIndex {
  std::vector<ManifestRow> rows;
  // Counts and problems worth a line each (rows skipped and why, labels not in the collection).
  std::vector<std::string> notes;
};

// Reads the collection's tables and builds the manifest rows. InvalidArgument naming the file, line and column for
// a malformed table; NotFound for a missing file.
absl::StatusOr<PublicCollectionIndex> IndexPublicCollection(const PublicCollectionOptions& options);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_PUBLIC_COLLECTIONS_H_
