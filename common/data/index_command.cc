#include "common/data/index_command.h"

#include <sys/stat.h>

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/data/dicom_index.h"
#include "common/data/manifest_writer.h"
#include "common/data/public_collections.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::data {
namespace {

int DefaultThreads() { return std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 256); }

absl::Status RequireFlag(const cli::ParsedFlags& flags, const std::string& name, const std::string& format) {
  if (flags.Get(name).has_value()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--", name, " is required with --format ", format));
}

absl::Status RefuseFlags(const cli::ParsedFlags& flags, std::initializer_list<const char*> names,
                         const std::string& format) {
  for (const char* name : names) {
    if (flags.Has(name)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " does not apply to --format ", format));
    }
  }
  return absl::OkStatus();
}

absl::Status RunPublicCollection(const cli::ParsedFlags& flags, const std::string& format, std::ostream& out) {
  RETURN_IF_ERROR(RefuseFlags(flags,
                              {"dicom-dir", "secret-file", "key", "state", "report", "threads", "view-fallback",
                               "max-files", "max-header-bytes", "stop-after"},
                              format));
  RETURN_IF_ERROR(RequireFlag(flags, "labels", format));
  PublicCollectionOptions options;
  options.collection = format == "mimic-cxr" ? PublicCollection::kMimicCxr : PublicCollection::kNihCxr14;
  options.labels_csv = *flags.Get("labels");
  options.metadata_csv = flags.Get("metadata").value_or("");
  options.split_file = flags.Get("split-file").value_or("");
  options.split = flags.Get("split").value_or("");
  if (flags.Get("image-kind")) options.image_kind = *flags.Get("image-kind");
  options.path_prefix = flags.Get("path-prefix").value_or("");
  const std::string manifest = flags.GetOrDie("out");
  ASSIGN_OR_RETURN(PublicCollectionIndex index, IndexPublicCollection(options));
  for (const std::string& note : index.notes) out << "data index: " << note << "\n";
  if (index.rows.empty()) {
    out << std::flush;
    return absl::InvalidArgumentError(absl::StrCat("no image rows from ", options.labels_csv, ": nothing to write"));
  }
  RETURN_IF_ERROR(WriteManifestCsv(manifest, index.rows));
  out << "data index: wrote " << index.rows.size() << " rows to " << manifest << "\n" << std::flush;
  return absl::OkStatus();
}

absl::Status RunDicomDir(const cli::ParsedFlags& flags, std::ostream& out) {
  RETURN_IF_ERROR(RefuseFlags(flags, {"metadata", "split-file", "split", "image-kind", "path-prefix"}, "dicom-dir"));
  for (const char* name : {"dicom-dir", "labels", "secret-file"})
    RETURN_IF_ERROR(RequireFlag(flags, name, "dicom-dir"));
  DicomIndexOptions options;
  options.dicom_dir = *flags.Get("dicom-dir");
  while (options.dicom_dir.size() > 1 && options.dicom_dir.back() == '/') options.dicom_dir.pop_back();
  options.labels_csv = *flags.Get("labels");
  ASSIGN_OR_RETURN(options.key, ParseStudyKey(flags.GetOrDie("key")));
  ASSIGN_OR_RETURN(options.view_fallback, ParseViewFallback(flags.GetOrDie("view-fallback")));
  ASSIGN_OR_RETURN(options.secret, ReadSiteSecret(*flags.Get("secret-file")));
  const std::string manifest = flags.GetOrDie("out");
  options.state_path = flags.Get("state").value_or(absl::StrCat(manifest, ".index-state"));
  ASSIGN_OR_RETURN(int64_t threads, flags.GetInt("threads", DefaultThreads()));
  if (threads < 1 || threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat("--threads: expected 1 to 256, got ", threads));
  }
  options.threads = static_cast<int>(threads);
  ASSIGN_OR_RETURN(options.max_files, flags.GetInt("max-files", options.max_files));
  ASSIGN_OR_RETURN(options.max_header_bytes, flags.GetInt("max-header-bytes", options.max_header_bytes));
  ASSIGN_OR_RETURN(options.stop_after_files, flags.GetInt("stop-after", 0));
  ASSIGN_OR_RETURN(int64_t batch_size, flags.GetInt("batch-size", options.batch_size));
  if (batch_size < 1 || batch_size > 100000) {
    return absl::InvalidArgumentError(absl::StrCat("--batch-size: expected 1 to 100000, got ", batch_size));
  }
  options.batch_size = static_cast<int>(batch_size);

  ASSIGN_OR_RETURN(DicomIndex index, IndexDicomExport(options));
  out << FormatDicomIndexReport(index.report) << std::flush;
  if (const std::optional<std::string> report = flags.Get("report")) {
    io::AtomicWriteOptions private_file;
    private_file.mode = 0600;  // It names studies by their accession numbers or UIDs.
    RETURN_IF_ERROR(io::WriteFileAtomically(*report, DicomIndexReportJson(index.report), private_file));
  }
  if (index.rows.empty()) {
    struct stat st;
    const bool existing = ::stat(manifest.c_str(), &st) == 0;
    return absl::InvalidArgumentError(
        absl::StrCat("no image of ", options.dicom_dir, " matched a label row of ", options.labels_csv, " (--key ",
                     StudyKeyName(options.key), "): no manifest written",
                     existing ? absl::StrCat("; the existing ", manifest, " was left unchanged") : ""));
  }
  // Its Study column holds accession numbers or Study Instance UIDs: readable by the owner only, as the state file.
  RETURN_IF_ERROR(WriteManifestCsv(manifest, index.rows, 0600));
  out << "data index: wrote " << index.rows.size() << " rows to " << manifest << " (paths relative to "
      << options.dicom_dir << ": use it as --root / data_root)\n"
      << std::flush;
  return absl::OkStatus();
}

}  // namespace

cli::Command MakeDataIndexCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"data", "index"};
  c.summary =
      "Write a CheXpert-format manifest from a PACS export folder of DICOM files and a labels CSV (or from a public "
      "collection's tables), reporting every study, label row and file left out";
  c.flags = {
      {"format", "dicom-dir (a PACS export), mimic-cxr or nih-cxr14", false, false, "dicom-dir", "FORMAT"},
      {"dicom-dir", "dicom-dir: the export folder; the manifest's paths are relative to it (the data root)", false,
       false, std::nullopt, "DIR"},
      {"labels",
       "labels CSV: the key column and the 14 CheXpert label columns (dicom-dir); the collection's labels "
       "table (mimic-cxr, nih-cxr14)",
       false, false, std::nullopt, "L.csv"},
      {"key", "dicom-dir: the labels column joined with the images", false, false, "AccessionNumber",
       "AccessionNumber|StudyInstanceUID"},
      {"secret-file", "dicom-dir: the site secret (16 to 4096 bytes) keying the PatientID pseudonyms (HMAC-SHA256)",
       false, false, std::nullopt, "F"},
      {"out", "the manifest to write", false, true, std::nullopt, "M.csv"},
      {"state", "dicom-dir: resumable scan state (SQLite); default <--out>.index-state", false, false, std::nullopt,
       "PATH"},
      {"report", "dicom-dir: also write the report as JSON", false, false, std::nullopt, "R.json"},
      {"threads", "dicom-dir: headers read in parallel (default: the number of CPUs)", false, false, std::nullopt, "N"},
      {"view-fallback", "dicom-dir: view of an image whose ViewPosition is not PA/AP/LL/RL/LATERAL", false, false,
       "skip", "skip|frontal|lateral"},
      {"max-files", "dicom-dir: refuse a folder with more entries (files, folders, links)", false, false, "1000000",
       "N"},
      {"max-header-bytes", "dicom-dir: bytes of a file read at most for its header", false, false, "1048576", "N"},
      {"stop-after", "dicom-dir, for tests: stop after reading N headers (as if killed); rerun to go on", false, false,
       std::nullopt, "N"},
      {"batch-size", "dicom-dir: files recorded in the state file per transaction (what a kill can lose)", false, false,
       "512", "N"},
      {"metadata", "mimic-cxr: mimic-cxr-2.0.0-metadata.csv", false, false, std::nullopt, "F.csv"},
      {"split-file", "mimic-cxr: mimic-cxr-2.0.0-split.csv; nih-cxr14: train_val_list.txt or test_list.txt", false,
       false, std::nullopt, "F"},
      {"split", "mimic-cxr: train, validate or test (default: all)", false, false, std::nullopt, "S"},
      {"image-kind", "mimic-cxr: dicom or jpg", false, false, std::nullopt, "KIND"},
      {"path-prefix", "mimic-cxr, nih-cxr14: prepended to every image path (e.g. images/)", false, false, std::nullopt,
       "P"},
  };
  c.run = [&out](const cli::ParsedFlags& flags) -> absl::Status {
    const std::string format = flags.GetOrDie("format");
    if (format == "dicom-dir") return RunDicomDir(flags, out);
    if (format == "mimic-cxr" || format == "nih-cxr14") return RunPublicCollection(flags, format, out);
    return absl::InvalidArgumentError(
        absl::StrCat("--format: expected dicom-dir, mimic-cxr or nih-cxr14, got '", format, "'"));
  };
  return c;
}

}  // namespace fedtune::data
