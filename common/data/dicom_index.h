// A CheXpert-format manifest from a folder of DICOM files exported from PACS and a labels spreadsheet keyed by
// accession number or study UID: the engine behind `fedtune-site data index` (index_command.h).
//
// Three steps, each usable alone:
//   1. ScanDicomFolder walks the folder and reads every file's DICOM header (never its pixels) on several threads,
//      recording each file's attributes, or why it was skipped, in a resumable state file (SQLite): a rerun after a
//      crash or a kill reads only the files not yet recorded or changed since (FileIdentity).
//   2. ParseStudyLabels reads the labels CSV (the key column and the 14 CheXpert label columns).
//   3. BuildDicomIndex joins the two into manifest rows (manifest_writer.h) and a report of everything left out:
//      studies without labels, label rows without a study, studies without a frontal view, non-image objects,
//      duplicate SOP instances, unreadable files.
// IndexDicomExport runs the three.
//
// No raw patient identifier leaves the scan: PatientID is replaced by an HMAC-SHA256 keyed with the site's secret
// (the same secret gives the same pseudonym), in the state file as in the manifest.
//
// Bounds on untrusted input: files under the folder (DicomIndexOptions::max_files), folder depth (kMaxFolderDepth),
// bytes of one file read for its header (max_header_bytes), sequence nesting (kMaxItemNesting), the labels file
// (max_labels_bytes and io::CsvParseOptions' limits), the secret (kMaxSecretBytes).
#ifndef FEDTUNE_COMMON_DATA_DICOM_INDEX_H_
#define FEDTUNE_COMMON_DATA_DICOM_INDEX_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/data/manifest.h"
#include "common/data/manifest_writer.h"

namespace fedtune::data {

// Which attribute joins images and label rows.
enum class StudyKey { kAccessionNumber, kStudyInstanceUid };
// "AccessionNumber" or "StudyInstanceUID": the DICOM keyword, also the labels file's column name.
const char* StudyKeyName(StudyKey key);
// Parses the names above. InvalidArgument otherwise.
absl::StatusOr<StudyKey> ParseStudyKey(absl::string_view name);

// What to do with an image whose ViewPosition is neither PA/AP (frontal) nor LL/RL/LATERAL/LAT (lateral).
enum class ViewFallback { kSkip, kFrontal, kLateral };
// Parses "skip", "frontal", "lateral". InvalidArgument otherwise.
absl::StatusOr<ViewFallback> ParseViewFallback(absl::string_view name);

// Limits (see the file comment).
inline constexpr int kMaxFolderDepth = 32;
inline constexpr int64_t kMaxSecretBytes = 4096;
inline constexpr int64_t kMinSecretBytes = 16;
// A header whose sequence items nest deeper than this is not parsed (DCMTK reads nested sequences recursively; real
// headers nest fewer than 10 levels).
inline constexpr int kMaxItemNesting = 1000;
// The stack of each thread that reads headers: room for kMaxItemNesting levels many times over.
inline constexpr size_t kScanThreadStackBytes = size_t{16} << 20;

struct DicomIndexOptions {
  // The export folder. Manifest paths are relative to it (it is the data root for `data check --root` and the
  // fine-tune config's data_root). Required.
  std::string dicom_dir;
  // The labels CSV. Required by IndexDicomExport.
  std::string labels_csv;
  StudyKey key = StudyKey::kAccessionNumber;
  // The HMAC key for PatientID pseudonyms, kMinSecretBytes to kMaxSecretBytes bytes (ReadSiteSecret). Required.
  std::string secret;
  // The resumable state file (SQLite). Required; IndexDicomExport callers usually pass "<manifest>.index-state".
  std::string state_path;
  // Files read in parallel, 1 to 256. Default 1.
  int threads = 1;
  // Default kSkip: an image without a known view is left out and reported (a wrong view would train the wrong
  // model), unless the site knows its exports are, e.g., all frontal.
  ViewFallback view_fallback = ViewFallback::kSkip;
  // More entries than this under dicom_dir (files, folders, and links or special files reported as problems) is
  // InvalidArgument, before any header is read. Default 1,000,000.
  int64_t max_files = 1'000'000;
  // At most this many bytes of a file are read for its header (read in growing pieces from 64 KiB); a file whose
  // header (everything before Pixel Data) is longer is skipped as unreadable, saying so. 4 KiB to 64 MiB.
  // Default 1 MiB.
  int64_t max_header_bytes = int64_t{1} << 20;
  // The labels file is refused unread above this size. Default 256 MiB.
  int64_t max_labels_bytes = int64_t{256} << 20;
  // Files recorded in the state file per transaction. Default 512.
  int batch_size = 512;
  // Test seam: when > 0, batches hold at most this many files and the scan stops (Aborted) after the first batch
  // that brings the files read to at least this many, if files remain, as a killed process would; a rerun goes on
  // from there. Default 0 (no stop).
  int64_t stop_after_files = 0;
};

// What one file is.
enum class FileKind : int {
  kImage = 0,       // A DICOM image with Pixel Data and an image SOP class.
  kNonImage = 1,    // A DICOM object that is not an image (SR, presentation state, KOS, DICOMDIR, no Pixel Data).
  kNotDicom = 2,    // Not a DICOM Part-10 file, or its header does not parse, or is longer than max_header_bytes.
  kUnreadable = 3,  // Could not be read (permissions, I/O error, symlink loop, not a regular file); never recorded
                    // in the state file, so that a fixed permission is seen on the next run.
};

// What tells whether a file changed since it was read: all of these must match for a rerun to reuse its record
// (the status-change time catches a same-size rewrite whose modification time was restored; inode and device a
// replacement by rename).
struct FileIdentity {
  int64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  int64_t inode = 0;
  int64_t device = 0;
  bool operator==(const FileIdentity& o) const {
    return size == o.size && mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns && inode == o.inode && device == o.device;
  }
};

// The attributes read from one file's header (blank when absent), and what the file is.
struct DicomFileRecord {
  std::string path;  // Relative to dicom_dir, '/'-separated.
  FileIdentity id;
  FileKind kind = FileKind::kUnreadable;
  std::string reason;   // Why the file is not an image ("" for images).
  std::string patient;  // HMAC-SHA256(secret, PatientID), 32 hex digits; "" when PatientID is blank.
  std::string study_uid, accession, sop_instance_uid, sop_class_uid, modality, view_position, laterality, sex, age;
};

// Reads the header of one file (`file` on disk; `record.path` is left to the caller) without decoding pixels.
// Never fails: problems become kNotDicom / kUnreadable / kNonImage with a reason. Thread-safe.
DicomFileRecord ReadDicomHeader(const std::string& file, const std::string& secret, int64_t max_header_bytes);

// The pseudonym of a PatientID (surrounding spaces and trailing NULs removed): hex of the first 16 bytes of
// HMAC-SHA256(secret, id).
std::string PseudonymizePatientId(const std::string& secret, absl::string_view patient_id);

// Reads a secret file: its bytes without one trailing newline. NotFound / PermissionDenied naming the file;
// InvalidArgument when it is not a regular file or has fewer than kMinSecretBytes or more than kMaxSecretBytes bytes.
absl::StatusOr<std::string> ReadSiteSecret(const std::string& path);

// A problem with one file or label row, for the report.
struct IndexIssue {
  std::string file;    // Relative to dicom_dir, or the labels file for label rows.
  std::string key;     // The study's key value, when about a study.
  std::string detail;  // The reason, the other file of a duplicate, the label row's line.
  int64_t line = 0;    // For label rows: the line in the labels file.
};

struct DicomScan {
  std::vector<DicomFileRecord> files;  // Every file found, sorted by path; unreadable ones included.
  int64_t files_read = 0;              // Headers read in this run.
  int64_t files_reused = 0;            // Taken from the state file unchanged.
  bool state_reset = false;            // The state file was made with another secret or header limit: emptied.
};

// Walks options.dicom_dir (following symbolic links, each folder visited once, at most kMaxFolderDepth deep) and
// reads every new or changed file's header, recording results in options.state_path in batches. Errors:
// InvalidArgument for bad options or more than max_files files; NotFound when dicom_dir does not exist; DataLoss /
// Unavailable / FailedPrecondition from the state file (store::Database::Open); Aborted from stop_after_files.
// A new state file is created with mode 0600 (it holds study keys). Files of the state file itself (and its
// -wal/-shm/-journal companions, found by device and inode) are not indexed. Not thread-safe for one state file (SQLite
// refuses a second writer with Unavailable).
absl::StatusOr<DicomScan> ScanDicomFolder(const DicomIndexOptions& options);

// One label row of the labels file.
struct StudyLabels {
  int64_t line = 0;
  RawLabels labels{};
};

// Parses the labels table: the key column (StudyKeyName(key)) and the 14 CheXpert label columns are required, other
// columns are ignored, cells are 1.0 / 0.0 / -1.0 / blank (ParseRawLabel). InvalidArgument "FILE:LINE: [COLUMN]
// ..." for a missing column, a malformed cell, a blank key, and a duplicate key (naming both lines).
absl::StatusOr<std::map<std::string, StudyLabels>> ParseStudyLabels(const io::CsvTable& table, StudyKey key);

struct DicomIndexReport {
  std::string dicom_dir;
  std::string labels_csv;
  std::string key;
  int64_t files_found = 0, files_read = 0, files_reused = 0;
  bool state_reset = false;
  int64_t images = 0;                              // Image files (before any is left out).
  int64_t studies_indexed = 0;                     // Studies in the manifest.
  int64_t rows = 0;                                // Manifest rows (images).
  std::vector<IndexIssue> studies_without_labels;  // One file of the study.
  // detail = "line N", then, when files carried the key but were all left out before joining a study (duplicates,
  // modality, no PatientID, non-image, unreadable): "; K files carry this key, all left out: n under LIST, ...".
  std::vector<IndexIssue> label_rows_without_study;
  std::vector<IndexIssue> studies_without_frontal;  // One file of the study.
  std::vector<IndexIssue> non_image_objects;        // detail = why (SOP class, no Pixel Data).
  std::vector<IndexIssue> duplicate_instances;      // file = the later path, detail = the kept one.
  std::vector<IndexIssue> unreadable_files;         // Unreadable or not DICOM; detail = why.
  std::vector<IndexIssue> images_left_out;          // Images of usable kinds left out: no view, no key, ...
};

struct DicomIndex {
  std::vector<ManifestRow> rows;  // In path order.
  DicomIndexReport report;
};

// Joins scanned files with labels (pure; no I/O). Rows: every image of every study whose key is in `labels`, that
// has at least one frontal image and one patient; images without a usable view (after the fallback), without a key,
// or of a modality other than CR/DX/DR (or blank) are left out and reported. Among images with the same SOP Instance
// UID the first by path is kept. Patient = the pseudonym, Study = the key's value (the unit the labels describe).
DicomIndex BuildDicomIndex(const DicomScan& scan, const std::map<std::string, StudyLabels>& labels,
                           const DicomIndexOptions& options);

// ScanDicomFolder, the labels file (NotFound / InvalidArgument as io::ReadCsvFile and ParseStudyLabels), then
// BuildDicomIndex. The labels are read first, so that a malformed file fails before the scan.
absl::StatusOr<DicomIndex> IndexDicomExport(const DicomIndexOptions& options);

// The human-readable report: counts, then each kind of issue with up to `max_listed` entries (and how many more).
// Control bytes in file names, keys and details are shown as \\xNN.
std::string FormatDicomIndexReport(const DicomIndexReport& report, int max_listed = 20);
// The whole report as JSON (every entry). File names that are not UTF-8 are text with U+FFFD in "file", and every
// byte C-escaped in "file_escaped".
std::string DicomIndexReportJson(const DicomIndexReport& report);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_DICOM_INDEX_H_
