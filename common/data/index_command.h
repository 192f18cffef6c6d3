// `fedtune-site data index`: writes a CheXpert-format manifest from a hospital's DICOM export folder and its labels
// spreadsheet (dicom_index.h), or from a public collection's own tables (public_collections.h).
#ifndef FEDTUNE_COMMON_DATA_INDEX_COMMAND_H_
#define FEDTUNE_COMMON_DATA_INDEX_COMMAND_H_

#include <ostream>

#include "common/cli/command.h"

namespace fedtune::data {

// `data index --dicom-dir DIR --labels L.csv --secret-file F --out M.csv [--key AccessionNumber|StudyInstanceUID]
// [--state PATH] [--report R.json] [--threads N] [--view-fallback skip|frontal|lateral] [--max-files N]
// [--max-header-bytes N] [--stop-after N]`, and `data index --format mimic-cxr|nih-cxr14 --labels ... [--metadata F]
// [--split-file F] [--split S] [--image-kind dicom|jpg] [--path-prefix P] --out M.csv`.
//
// dicom-dir: the manifest's paths are relative to --dicom-dir (give it as `data check --root` and as the fine-tune
// config's data_root). The state file defaults to "<--out>.index-state". Prints the report (FormatDicomIndexReport)
// to `out` (which must outlive the command) and writes it as JSON to --report when given. Exit 0 when the manifest
// is written; InvalidArgument (exit 2) for bad flags, a malformed labels file, or when no image matched a label row
// (no manifest is written then); Aborted (exit 1) for --stop-after; other errors as dicom_index.h.
// mimic-cxr / nih-cxr14: data::IndexPublicCollection's rows and notes; its errors are the command's.
cli::Command MakeDataIndexCommand(std::ostream& out);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_INDEX_COMMAND_H_
