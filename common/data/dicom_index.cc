#include "common/data/dicom_index.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/imaging/dicom_inflate.h"
#include "common/io/csv.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/store/database.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcistrmb.h"
#include "dcmtk/dcmdata/dcmetinf.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "dcmtk/oflog/oflog.h"
#include "openssl/evp.h"
#include "openssl/hmac.h"

namespace fedtune::data {
namespace {

constexpr int64_t kFirstHeaderRead = 64 * 1024;
constexpr int64_t kMinHeaderBytes = 4 * 1024;
constexpr int64_t kMaxHeaderBytesLimit = int64_t{64} << 20;
// Bumped when what ReadDicomHeader extracts changes: older state files are then rescanned.
constexpr const char* kScanVersion = "fedtune data index v2";

const store::Migration kStateMigrations[] = {
    {1,
     "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
     "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
     " kind INTEGER NOT NULL, reason TEXT NOT NULL, patient TEXT NOT NULL, study_uid TEXT NOT NULL,"
     " accession TEXT NOT NULL, sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL, modality TEXT NOT NULL,"
     " view_position TEXT NOT NULL, laterality TEXT NOT NULL, sex TEXT NOT NULL, age TEXT NOT NULL);"},
    // A same-size rewrite with its modification time restored (touch -r, rsync -a, cp -p) still changes the
    // status-change time, or the inode. Rows from version 1 have zeros here, so their files are read again.
    {2,
     "ALTER TABLE files ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE files ADD COLUMN inode INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE files ADD COLUMN device INTEGER NOT NULL DEFAULT 0;"},
};

std::string Hex(const unsigned char* bytes, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out += kDigits[bytes[i] >> 4];
    out += kDigits[bytes[i] & 15];
  }
  return out;
}

std::string HmacHex(const std::string& key, absl::string_view message, size_t bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  CHECK(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
             reinterpret_cast<const unsigned char*>(message.data()), message.size(), digest, &length) != nullptr);
  return Hex(digest, std::min<size_t>(bytes, length));
}

void QuietDcmtkOnce() {
  static std::once_flag once;
  // Every problem comes back as a reason; DCMTK's own warnings (e.g. at each stop before Pixel Data) would flood
  // stderr on a 100,000-file folder.
  std::call_once(once, [] { OFLog::configure(OFLogger::FATAL_LOG_LEVEL); });
}

DicomFileRecord Unreadable(std::string reason) {
  DicomFileRecord r;
  r.kind = FileKind::kUnreadable;
  r.reason = std::move(reason);
  return r;
}

// A value without its padding: surrounding whitespace, and trailing NULs (DICOM pads odd-length values with a space,
// or a NUL for UIDs, and some writers pad other strings with NULs too).
absl::string_view StripPadding(absl::string_view value) {
  value = absl::StripLeadingAsciiWhitespace(value);
  while (!value.empty() && (value.back() == '\0' || absl::ascii_isspace(static_cast<unsigned char>(value.back())))) {
    value.remove_suffix(1);
  }
  return value;
}

std::string GetString(DcmItem* item, const DcmTagKey& tag) {
  OFString value;
  if (item == nullptr || item->findAndGetOFString(tag, value).bad()) return "";
  return std::string(StripPadding(absl::string_view(value.c_str(), value.length())));
}

// Whether the 4 bytes at `at` in `buf` are the tag (7FE0,0010) in either byte order.
bool IsPixelDataTag(const std::string& buf, int64_t at) {
  if (at < 0 || at + 4 > static_cast<int64_t>(buf.size())) return false;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(buf.data()) + at;
  return (p[0] == 0xE0 && p[1] == 0x7F && p[2] == 0x10 && p[3] == 0x00) ||
         (p[0] == 0x7F && p[1] == 0xE0 && p[2] == 0x00 && p[3] == 0x10);
}

bool IsNonImageSopClass(absl::string_view uid) {
  static constexpr const char* kPrefixes[] = {
      "1.2.840.10008.5.1.4.1.1.88.",   // Structured reports, key object selection.
      "1.2.840.10008.5.1.4.1.1.11.",   // Presentation states.
      "1.2.840.10008.5.1.4.1.1.104.",  // Encapsulated PDF / CDA.
      "1.2.840.10008.5.1.4.1.1.9.",    // Waveforms.
      "1.2.840.10008.5.1.4.1.1.66",    // Raw data, registrations, fiducials, segmentation.
      "1.2.840.10008.5.1.4.1.1.481.",  // RT plans, doses, structure sets.
      "1.2.840.10008.1.3.10",          // DICOMDIR (Media Storage Directory).
  };
  for (const char* prefix : kPrefixes) {
    if (absl::StartsWith(uid, prefix)) return true;
  }
  return false;
}

std::string SopClassText(const std::string& uid) {
  if (uid.empty()) return "no SOP Class UID";
  const char* name = dcmFindNameOfUID(uid.c_str(), nullptr);
  return name == nullptr ? uid : absl::StrCat(name, " (", uid, ")");
}

// A DICOM age string ("065Y", "006M", "010W", "003D") in years, or "" when malformed.
std::optional<double> ParseDicomAge(absl::string_view age) {
  if (age.size() != 4) return std::nullopt;
  int n = 0;
  if (!absl::SimpleAtoi(age.substr(0, 3), &n) || n < 0) return std::nullopt;
  switch (age[3]) {
    case 'Y':
      return n;
    case 'M':
      return n / 12.0;
    case 'W':
      return n * 7 / 365.25;
    case 'D':
      return n / 365.25;
    default:
      return std::nullopt;
  }
}

absl::Status CheckOptions(const DicomIndexOptions& o) {
  if (o.dicom_dir.empty()) return absl::InvalidArgumentError("--dicom-dir: required");
  if (o.state_path.empty()) return absl::InvalidArgumentError("the state file's path is empty");
  if (static_cast<int64_t>(o.secret.size()) < kMinSecretBytes ||
      static_cast<int64_t>(o.secret.size()) > kMaxSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the site secret must have ", kMinSecretBytes, " to ",
                                                   kMaxSecretBytes, " bytes, has ", o.secret.size()));
  }
  if (o.threads < 1 || o.threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat("--threads: expected 1 to 256, got ", o.threads));
  }
  if (o.max_files < 1 || o.max_files > 100'000'000) {
    return absl::InvalidArgumentError(absl::StrCat("--max-files: expected 1 to 100000000, got ", o.max_files));
  }
  if (o.max_header_bytes < kMinHeaderBytes || o.max_header_bytes > kMaxHeaderBytesLimit) {
    return absl::InvalidArgumentError(absl::StrCat("--max-header-bytes: expected ", kMinHeaderBytes, " to ",
                                                   kMaxHeaderBytesLimit, ", got ", o.max_header_bytes));
  }
  if (o.batch_size < 1 || o.batch_size > 100000) {
    return absl::InvalidArgumentError(absl::StrCat("batch size: expected 1 to 100000, got ", o.batch_size));
  }
  if (o.stop_after_files < 0) return absl::InvalidArgumentError("--stop-after: must be >= 0");
  return absl::OkStatus();
}

// One regular file found by the walk.
struct FoundFile {
  std::string rel;
  FileIdentity id;
};

int64_t Nanoseconds(const struct timespec& t) { return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec; }

FileIdentity IdentityOf(const struct stat& st) {
  FileIdentity id;
  id.size = static_cast<int64_t>(st.st_size);
  id.mtime_ns = Nanoseconds(st.st_mtim);
  id.ctime_ns = Nanoseconds(st.st_ctim);
  id.inode = static_cast<int64_t>(st.st_ino);
  id.device = static_cast<int64_t>(st.st_dev);
  return id;
}

class FolderWalk {
 public:
  FolderWalk(const DicomIndexOptions& options, std::set<std::pair<dev_t, ino_t>> excluded)
      : options_(options), excluded_(std::move(excluded)) {}

  absl::Status Run() {
    struct stat st;
    if (::stat(options_.dicom_dir.c_str(), &st) != 0) {
      return io::ErrnoToStatus(errno, "--dicom-dir: cannot open", options_.dicom_dir);
    }
    if (!S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat("--dicom-dir '", options_.dicom_dir, "' is not a folder"));
    }
    visited_.insert({st.st_dev, st.st_ino});
    RETURN_IF_ERROR(Walk(options_.dicom_dir, "", 0));
    std::sort(files_.begin(), files_.end(), [](const FoundFile& a, const FoundFile& b) { return a.rel < b.rel; });
    return absl::OkStatus();
  }

  std::vector<FoundFile>& files() { return files_; }
  std::vector<DicomFileRecord>& problems() { return problems_; }

 private:
  void Problem(const std::string& rel, std::string reason) {
    DicomFileRecord r = Unreadable(std::move(reason));
    r.path = rel;
    problems_.push_back(std::move(r));
  }

  absl::Status Walk(const std::string& dir, const std::string& rel_dir, int depth) {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
      Problem(rel_dir.empty() ? "." : rel_dir, absl::StrCat("cannot list the folder: ", std::strerror(errno)));
      return absl::OkStatus();
    }
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
      if (static_cast<int64_t>(names.size()) > options_.max_files) break;  // Refused below.
    }
    ::closedir(d);
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      // Folders and problems count too: a million FIFOs or empty folders must not make a million-line report.
      if (static_cast<int64_t>(files_.size() + problems_.size() + visited_.size()) > options_.max_files) {
        return absl::InvalidArgumentError(absl::StrCat("--dicom-dir '", options_.dicom_dir, "' holds more than ",
                                                       options_.max_files, " files (--max-files)"));
      }
      const std::string abs = absl::StrCat(dir, "/", name);
      const std::string rel = rel_dir.empty() ? name : absl::StrCat(rel_dir, "/", name);
      struct stat st;
      if (::stat(abs.c_str(), &st) != 0) {
        const int err = errno;
        struct stat lst;
        const bool is_link = ::lstat(abs.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode);
        if (err == ELOOP) {
          Problem(rel, "symbolic link loop");
        } else if (is_link && err == ENOENT) {
          Problem(rel, "dangling symbolic link");
        } else {
          Problem(rel, absl::StrCat("cannot stat: ", std::strerror(err)));
        }
        continue;
      }
      if (S_ISDIR(st.st_mode)) {
        if (!visited_.insert({st.st_dev, st.st_ino}).second) {
          Problem(rel, "folder already visited through another path (a symbolic link loop or a second link): skipped");
          continue;
        }
        if (depth + 1 > kMaxFolderDepth) {
          Problem(rel, absl::StrCat("folder nested deeper than ", kMaxFolderDepth, " levels: skipped"));
          continue;
        }
        RETURN_IF_ERROR(Walk(abs, rel, depth + 1));
        continue;
      }
      if (excluded_.count({st.st_dev, st.st_ino}) > 0) continue;
      if (!S_ISREG(st.st_mode)) {
        Problem(rel, "not a regular file (a FIFO, socket or device)");
        continue;
      }
      absl::Status valid = ValidateManifestPath(rel);
      if (!valid.ok()) {
        Problem(rel, absl::StrCat("name not usable in a manifest: ", valid.message()));
        continue;
      }
      files_.push_back({rel, IdentityOf(st)});
    }
    return absl::OkStatus();
  }

  const DicomIndexOptions& options_;
  const std::set<std::pair<dev_t, ino_t>> excluded_;
  std::set<std::pair<dev_t, ino_t>> visited_;
  std::vector<FoundFile> files_;
  std::vector<DicomFileRecord> problems_;
};

// How deeply the items of `buf` nest, found without parsing: every item start (FFFE,E000) in either byte order
// opens a level, closed by an item delimiter (FFFE,E00D) when its length is undefined, or at its end when defined.
// DCMTK reads nested sequences recursively, so a few hundred bytes per level can exhaust any thread's stack: the
// depth is checked before DCMTK sees the bytes. A value's bytes that happen to look like an item tag only make the
// estimate larger (and 8-byte matches in real pixel or private data are vanishingly rare). Stops counting above
// `limit` and returns limit + 1.
int ItemNestingDepth(const std::string& buf, int limit) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(buf.data());
  const size_t n = buf.size();
  std::vector<int64_t> open;  // The end offset of each open item; -1 when its length is undefined.
  int deepest = 0;
  for (size_t i = 0; i + 8 <= n; ++i) {
    const bool le = p[i] == 0xFE && p[i + 1] == 0xFF && p[i + 3] == 0xE0;
    const bool be = p[i] == 0xFF && p[i + 1] == 0xFE && p[i + 2] == 0xE0;
    if (!le && !be) continue;
    const unsigned char element = le ? p[i + 2] : p[i + 3];
    if (element != 0x00 && element != 0x0D) continue;
    while (!open.empty() && open.back() >= 0 && open.back() <= static_cast<int64_t>(i)) open.pop_back();
    const uint32_t length =
        le ? (uint32_t{p[i + 4]} | uint32_t{p[i + 5]} << 8 | uint32_t{p[i + 6]} << 16 | uint32_t{p[i + 7]} << 24)
           : (uint32_t{p[i + 7]} | uint32_t{p[i + 6]} << 8 | uint32_t{p[i + 5]} << 16 | uint32_t{p[i + 4]} << 24);
    if (element == 0x0D) {
      if (!open.empty() && open.back() < 0) open.pop_back();
    } else {
      open.push_back(length == 0xFFFFFFFFu ? -1 : static_cast<int64_t>(i) + 8 + length);
      deepest = std::max(deepest, static_cast<int>(open.size()));
      if (deepest > limit) return limit + 1;
    }
    i += 7;
  }
  return deepest;
}

void* RunFunction(void* function) {
  (*static_cast<const std::function<void()>*>(function))();
  return nullptr;
}

// Runs `work` on `n` new threads with kScanThreadStackBytes of stack each (not the caller's, whose stack size is
// unknown, nor std::thread's, which follows `ulimit -s`) and waits for them. Fewer threads when some cannot be
// made; ResourceExhausted when none can.
absl::Status RunOnThreads(int n, const std::function<void()>& work) {
  pthread_attr_t attr;
  if (::pthread_attr_init(&attr) != 0) return absl::ResourceExhaustedError("cannot start a scan thread");
  const int stack_error = ::pthread_attr_setstacksize(&attr, kScanThreadStackBytes);
  std::vector<pthread_t> threads;
  int error = stack_error;
  for (int t = 0; t < n && error == 0; ++t) {
    pthread_t id;
    error = ::pthread_create(&id, &attr, &RunFunction, const_cast<std::function<void()>*>(&work));
    if (error == 0) threads.push_back(id);
  }
  ::pthread_attr_destroy(&attr);
  for (pthread_t id : threads) ::pthread_join(id, nullptr);
  if (threads.empty()) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot start a scan thread with a ", kScanThreadStackBytes >> 20,
                                                     " MiB stack: ", std::strerror(error)));
  }
  return absl::OkStatus();
}

// Whether the Part-10 meta header at the start of `buf` (always explicit VR little endian) names Deflated Explicit
// VR Little Endian.
bool IsDeflatedPart10(const std::string& buf) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(buf.data());
  size_t at = 132;
  while (at + 8 <= buf.size()) {
    const unsigned group = p[at] | p[at + 1] << 8;
    const unsigned element = p[at + 2] | p[at + 3] << 8;
    if (group != 2) return false;
    const std::string vr = buf.substr(at + 4, 2);
    size_t length = 0, header = 8;
    if (vr == "OB" || vr == "OW" || vr == "OF" || vr == "SQ" || vr == "UT" || vr == "UN") {
      if (at + 12 > buf.size()) return false;
      length = p[at + 8] | p[at + 9] << 8 | p[at + 10] << 16 | static_cast<size_t>(p[at + 11]) << 24;
      header = 12;
    } else {
      length = p[at + 6] | p[at + 7] << 8;
    }
    if (element == 0x10) {
      if (at + header + length > buf.size()) return false;
      return StripPadding(absl::string_view(buf).substr(at + header, length)) ==
             imaging::kDeflatedExplicitLittleEndianUid;
    }
    at += header + length;
  }
  return false;
}

// The outcome of parsing a prefix of a file.
enum class ParseOutcome { kDone, kNeedMore, kFailed };

ParseOutcome ParseHeader(const std::string& buf, bool whole_file, DcmFileFormat* format, bool* pixel_data,
                         std::string* error) {
  DcmInputBufferStream stream;
  stream.setBuffer(buf.data(), static_cast<offile_off_t>(buf.size()));
  stream.setEos();
  format->transferInit();
  const OFCondition c =
      // Every value in the buffer is loaded: the buffer (at most max_header_bytes) bounds the memory, and a buffer
      // stream cannot load skipped values later.
      format->readUntilTag(stream, EXS_Unknown, EGL_noChange, static_cast<Uint32>(kMaxHeaderBytesLimit), DCM_PixelData);
  format->transferEnd();
  // Parsing stops right after the tag and length of the first element at or after (7FE0,0010): its tag is 8
  // (implicit VR, or explicit with a short length) or 12 bytes (explicit OB/OW) before the stream's position.
  const int64_t at = static_cast<int64_t>(stream.tell());
  if (IsPixelDataTag(buf, at - 8) || IsPixelDataTag(buf, at - 12)) {
    *pixel_data = true;
    return ParseOutcome::kDone;
  }
  DcmDataset* ds = format->getDataset();
  *pixel_data = ds != nullptr && (ds->tagExists(DCM_FloatPixelData) || ds->tagExists(DCM_DoubleFloatPixelData));
  if (whole_file) {
    if (c.good() || *pixel_data) return ParseOutcome::kDone;
    *error = c.text();
    return ParseOutcome::kFailed;
  }
  // A prefix without Pixel Data: the header may go on past it.
  *error = c.text();
  return ParseOutcome::kNeedMore;
}

// The header of a Deflated Explicit VR Little Endian file: its dataset inflated (imaging::InflateDeflatedDicom), at
// most max_header_bytes of it, then parsed as an uncompressed file is (DCMTK never sees the deflated bytes, which it
// would inflate without a bound). False with `error` set when it cannot be read.
bool ParseDeflatedHeader(const std::string& file, int64_t max_header_bytes, DcmFileFormat* format, bool* pixel_data,
                         std::string* error) {
  std::string inflated;
  bool stopped = false;
  imaging::DicomInflateOptions options;
  // The sink stops at max_header_bytes; this bounds only the input read until then (deflate rarely expands).
  options.max_bytes = 2 * max_header_bytes + (int64_t{1} << 20);
  const absl::Status status =
      imaging::InflateDeflatedDicom(file, "deflated dataset", options, [&](absl::string_view bytes) -> absl::Status {
        const size_t room = static_cast<size_t>(max_header_bytes) - inflated.size();
        inflated.append(bytes.data(), std::min(room, bytes.size()));
        if (static_cast<int64_t>(inflated.size()) >= max_header_bytes) {
          stopped = true;
          return absl::CancelledError("enough for the header");
        }
        return absl::OkStatus();
      });
  if (!status.ok() && !stopped) {
    *error = absl::StrCat("unreadable: ", status.message());
    return false;
  }
  if (ItemNestingDepth(inflated, kMaxItemNesting) > kMaxItemNesting) {
    *error = absl::StrCat("unreadable: sequences nested deeper than ", kMaxItemNesting,
                          " levels (real headers nest fewer than 10)");
    return false;
  }
  std::string parse_error;
  switch (ParseHeader(inflated, !stopped, format, pixel_data, &parse_error)) {
    case ParseOutcome::kDone:
      return true;
    case ParseOutcome::kFailed:
      *error = absl::StrCat("malformed DICOM header (deflated): ", parse_error);
      return false;
    case ParseOutcome::kNeedMore:
      break;
  }
  *error = absl::StrCat("no Pixel Data within the first ", max_header_bytes,
                        " inflated bytes (--max-header-bytes) of a deflated file");
  return false;
}

}  // namespace

const char* StudyKeyName(StudyKey key) {
  return key == StudyKey::kAccessionNumber ? "AccessionNumber" : "StudyInstanceUID";
}

absl::StatusOr<StudyKey> ParseStudyKey(absl::string_view name) {
  if (name == "AccessionNumber") return StudyKey::kAccessionNumber;
  if (name == "StudyInstanceUID") return StudyKey::kStudyInstanceUid;
  return absl::InvalidArgumentError(
      absl::StrCat("--key: expected AccessionNumber or StudyInstanceUID, got '", absl::CHexEscape(name), "'"));
}

absl::StatusOr<ViewFallback> ParseViewFallback(absl::string_view name) {
  if (name == "skip") return ViewFallback::kSkip;
  if (name == "frontal") return ViewFallback::kFrontal;
  if (name == "lateral") return ViewFallback::kLateral;
  return absl::InvalidArgumentError(
      absl::StrCat("--view-fallback: expected skip, frontal or lateral, got '", absl::CHexEscape(name), "'"));
}

std::string PseudonymizePatientId(const std::string& secret, absl::string_view patient_id) {
  return HmacHex(secret, StripPadding(patient_id), 16);
}

absl::StatusOr<std::string> ReadSiteSecret(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return io::ErrnoToStatus(errno, "--secret-file: cannot open", path);
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("--secret-file '", path, "' is not a regular file"));
  }
  if (st.st_size > kMaxSecretBytes + 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("--secret-file '", path, "': ", st.st_size, " bytes, more than ", kMaxSecretBytes));
  }
  ASSIGN_OR_RETURN(std::string secret, io::ReadFile(path));
  if (absl::EndsWith(secret, "\r\n")) {
    secret.resize(secret.size() - 2);
  } else if (absl::EndsWith(secret, "\n")) {
    secret.pop_back();
  }
  if (static_cast<int64_t>(secret.size()) < kMinSecretBytes || static_cast<int64_t>(secret.size()) > kMaxSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat("--secret-file '", path, "': the secret must have ", kMinSecretBytes,
                                                   " to ", kMaxSecretBytes, " bytes, has ", secret.size(),
                                                   " (make one with: openssl rand -hex 32 > FILE)"));
  }
  return secret;
}

DicomFileRecord ReadDicomHeader(const std::string& file, const std::string& secret, int64_t max_header_bytes) {
  QuietDcmtkOnce();
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    return Unreadable(errno == ELOOP ? std::string("symbolic link loop")
                                     : absl::StrCat("cannot open: ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Unreadable("not a regular file");
  }
  const int64_t size = st.st_size;
  std::string buf;
  DicomFileRecord r;
  r.id = IdentityOf(st);
  int64_t want = std::min({size, kFirstHeaderRead, max_header_bytes});
  std::unique_ptr<DcmFileFormat> format;
  bool pixel_data = false;
  for (;;) {
    const int64_t have = static_cast<int64_t>(buf.size());
    buf.resize(static_cast<size_t>(want));
    int64_t done = have;
    while (done < want) {
      const ssize_t n = ::pread(fd, buf.data() + done, static_cast<size_t>(want - done), done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const std::string error = std::strerror(errno);
        ::close(fd);
        return Unreadable(absl::StrCat("read error: ", error));
      }
      if (n == 0) break;  // The file shrank while being read.
      done += n;
    }
    buf.resize(static_cast<size_t>(done));
    if (buf.size() < 132 || buf.compare(128, 4, "DICM") != 0) {
      ::close(fd);
      r.kind = FileKind::kNotDicom;
      r.reason = "not a DICOM Part-10 file (no 'DICM' at byte 128)";
      return r;
    }
    if (have == 0 && IsDeflatedPart10(buf)) {
      ::close(fd);
      fd = -1;
      format = std::make_unique<DcmFileFormat>();
      std::string error;
      if (!ParseDeflatedHeader(file, max_header_bytes, format.get(), &pixel_data, &error)) {
        r.kind = FileKind::kNotDicom;
        r.reason = std::move(error);
        return r;
      }
      break;
    }
    const bool whole = done >= size || done < want;
    if (ItemNestingDepth(buf, kMaxItemNesting) > kMaxItemNesting) {
      ::close(fd);
      r.kind = FileKind::kNotDicom;
      r.reason = absl::StrCat("unreadable: sequences nested deeper than ", kMaxItemNesting,
                              " levels (real headers nest fewer than 10)");
      return r;
    }
    std::string error;
    format = std::make_unique<DcmFileFormat>();
    const ParseOutcome outcome = ParseHeader(buf, whole, format.get(), &pixel_data, &error);
    if (outcome == ParseOutcome::kDone) break;
    if (outcome == ParseOutcome::kFailed) {
      ::close(fd);
      r.kind = FileKind::kNotDicom;
      r.reason = absl::StrCat("malformed DICOM header: ", error);
      return r;
    }
    if (want >= max_header_bytes) {
      ::close(fd);
      // A DICOMDIR (or another non-image object) can be longer than any image header: its meta header says what it is.
      const std::string media_class = GetString(format->getMetaInfo(), DCM_MediaStorageSOPClassUID);
      if (IsNonImageSopClass(media_class)) {
        r.kind = FileKind::kNonImage;
        r.sop_class_uid = media_class;
        r.sop_instance_uid = GetString(format->getMetaInfo(), DCM_MediaStorageSOPInstanceUID);
        r.reason = absl::StrCat("non-image object: ", SopClassText(media_class), " (longer than --max-header-bytes)");
        return r;
      }
      r.kind = FileKind::kNotDicom;
      r.reason = absl::StrCat("no Pixel Data within the first ", max_header_bytes, " bytes (--max-header-bytes) of a ",
                              size, "-byte file");
      return r;
    }
    want = std::min({size, want * 4, max_header_bytes});
  }
  if (fd >= 0) ::close(fd);

  DcmDataset* ds = format->getDataset();
  DcmMetaInfo* meta = format->getMetaInfo();
  r.sop_class_uid = GetString(ds, DCM_SOPClassUID);
  if (r.sop_class_uid.empty()) r.sop_class_uid = GetString(meta, DCM_MediaStorageSOPClassUID);
  r.sop_instance_uid = GetString(ds, DCM_SOPInstanceUID);
  if (r.sop_instance_uid.empty()) r.sop_instance_uid = GetString(meta, DCM_MediaStorageSOPInstanceUID);
  const std::string patient_id = GetString(ds, DCM_PatientID);
  r.patient = patient_id.empty() ? "" : PseudonymizePatientId(secret, patient_id);
  r.study_uid = GetString(ds, DCM_StudyInstanceUID);
  r.accession = GetString(ds, DCM_AccessionNumber);
  r.modality = GetString(ds, DCM_Modality);
  r.view_position = GetString(ds, DCM_ViewPosition);
  r.laterality = GetString(ds, DCM_ImageLaterality);
  r.sex = GetString(ds, DCM_PatientSex);
  r.age = GetString(ds, DCM_PatientAge);
  if (r.sop_class_uid.empty() && r.sop_instance_uid.empty()) {
    r.kind = FileKind::kNotDicom;
    r.reason = "no SOP Class UID or SOP Instance UID: not a DICOM object";
  } else if (IsNonImageSopClass(r.sop_class_uid)) {
    r.kind = FileKind::kNonImage;
    r.reason = absl::StrCat("non-image object: ", SopClassText(r.sop_class_uid));
  } else if (!pixel_data) {
    r.kind = FileKind::kNonImage;
    r.reason = absl::StrCat("no Pixel Data: ", SopClassText(r.sop_class_uid));
  } else {
    r.kind = FileKind::kImage;
  }
  return r;
}

absl::StatusOr<DicomScan> ScanDicomFolder(const DicomIndexOptions& options) {
  RETURN_IF_ERROR(CheckOptions(options));
  // The state file's own files, by identity (however their path is spelt): those that exist now; one made after the
  // walk cannot be found by it.
  std::set<std::pair<dev_t, ino_t>> excluded;
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
    struct stat st;
    if (::stat(absl::StrCat(options.state_path, suffix).c_str(), &st) == 0) excluded.insert({st.st_dev, st.st_ino});
  }
  FolderWalk walk(options, excluded);
  RETURN_IF_ERROR(walk.Run());

  // The state file holds study keys (accession numbers): readable by its owner only. SQLite gives its -wal and -shm
  // files the database file's mode, so creating it first with 0600 covers them too.
  if (const int fd = ::open(options.state_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600); fd >= 0) {
    ::close(fd);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<store::Database> db, store::Database::Open(options.state_path, kStateMigrations));
  DicomScan scan;
  // The state is only valid for the same secret (pseudonyms) and header limit (what counts as unreadable).
  const std::string scan_key =
      HmacHex(options.secret, absl::StrCat(kScanVersion, "; max_header_bytes=", options.max_header_bytes), 32);
  {
    ASSIGN_OR_RETURN(store::Statement get, db->Prepare("SELECT value FROM meta WHERE key = 'scan_key'"));
    ASSIGN_OR_RETURN(bool has, get.Step());
    if (!has || get.ColumnText(0) != scan_key) {
      ASSIGN_OR_RETURN(store::Statement count, db->Prepare("SELECT COUNT(*) FROM files"));
      ASSIGN_OR_RETURN(bool counted, count.Step());
      scan.state_reset = counted && count.ColumnInt(0) > 0;
      RETURN_IF_ERROR(db->InTransaction([&]() -> absl::Status {
        RETURN_IF_ERROR(db->Execute("DELETE FROM files"));
        ASSIGN_OR_RETURN(store::Statement put,
                         db->Prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('scan_key', ?)"));
        return put.Bind(1, scan_key).Run();
      }));
    }
  }
  absl::flat_hash_map<std::string, DicomFileRecord> known;
  {
    ASSIGN_OR_RETURN(store::Statement all,
                     db->Prepare("SELECT path, size, mtime_ns, kind, reason, patient, study_uid, accession, "
                                 "sop_instance_uid, sop_class_uid, modality, view_position, laterality, sex, age, "
                                 "ctime_ns, inode, device FROM files"));
    for (;;) {
      ASSIGN_OR_RETURN(bool row, all.Step());
      if (!row) break;
      DicomFileRecord r;
      r.path = all.ColumnText(0);
      r.id.size = all.ColumnInt(1);
      r.id.mtime_ns = all.ColumnInt(2);
      r.id.ctime_ns = all.ColumnInt(15);
      r.id.inode = all.ColumnInt(16);
      r.id.device = all.ColumnInt(17);
      const int64_t kind = all.ColumnInt(3);
      if (kind < 0 || kind > 2) {
        return absl::DataLossError(
            absl::StrCat(options.state_path, ": file '", r.path, "' has kind ", kind, "; delete the state file"));
      }
      r.kind = static_cast<FileKind>(kind);
      r.reason = all.ColumnText(4);
      r.patient = all.ColumnText(5);
      r.study_uid = all.ColumnText(6);
      r.accession = all.ColumnText(7);
      r.sop_instance_uid = all.ColumnText(8);
      r.sop_class_uid = all.ColumnText(9);
      r.modality = all.ColumnText(10);
      r.view_position = all.ColumnText(11);
      r.laterality = all.ColumnText(12);
      r.sex = all.ColumnText(13);
      r.age = all.ColumnText(14);
      known.emplace(r.path, std::move(r));
    }
  }

  std::vector<FoundFile>& found = walk.files();
  std::vector<DicomFileRecord> records(found.size());
  std::vector<size_t> to_read;
  absl::flat_hash_set<std::string> present;
  for (size_t i = 0; i < found.size(); ++i) {
    present.insert(found[i].rel);
    auto it = known.find(found[i].rel);
    if (it != known.end() && it->second.id == found[i].id) {
      records[i] = std::move(it->second);
      ++scan.files_reused;
    } else {
      to_read.push_back(i);
    }
  }

  ASSIGN_OR_RETURN(
      store::Statement insert,
      db->Prepare("INSERT OR REPLACE INTO files (path, size, mtime_ns, kind, reason, patient, study_uid, "
                  "accession, sop_instance_uid, sop_class_uid, modality, view_position, laterality, sex, "
                  "age, ctime_ns, inode, device) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
  // With a stop, batches are no larger than it, so that the stop comes after about that many files.
  const size_t batch =
      static_cast<size_t>(options.stop_after_files > 0 ? std::min<int64_t>(options.batch_size, options.stop_after_files)
                                                       : options.batch_size);
  for (size_t start = 0; start < to_read.size(); start += batch) {
    const size_t end = std::min(to_read.size(), start + batch);
    std::atomic<size_t> next{start};
    const std::function<void()> work = [&] {
      for (size_t k = next++; k < end; k = next++) {
        const FoundFile& f = found[to_read[k]];
        DicomFileRecord r =
            ReadDicomHeader(absl::StrCat(options.dicom_dir, "/", f.rel), options.secret, options.max_header_bytes);
        r.path = f.rel;
        if (r.kind == FileKind::kUnreadable) {
          // Keep the walk's view of the file, so that the next run retries it.
          r.id = f.id;
        }
        records[to_read[k]] = std::move(r);
      }
    };
    RETURN_IF_ERROR(RunOnThreads(static_cast<int>(std::min<size_t>(options.threads, end - start)), work));
    RETURN_IF_ERROR(db->InTransaction([&]() -> absl::Status {
      for (size_t k = start; k < end; ++k) {
        const DicomFileRecord& r = records[to_read[k]];
        if (r.kind == FileKind::kUnreadable) continue;
        insert.Reset();
        insert.Bind(1, r.path)
            .Bind(2, r.id.size)
            .Bind(3, r.id.mtime_ns)
            .Bind(4, static_cast<int64_t>(r.kind))
            .Bind(5, r.reason)
            .Bind(6, r.patient)
            .Bind(7, r.study_uid)
            .Bind(8, r.accession)
            .Bind(9, r.sop_instance_uid)
            .Bind(10, r.sop_class_uid)
            .Bind(11, r.modality)
            .Bind(12, r.view_position)
            .Bind(13, r.laterality)
            .Bind(14, r.sex)
            .Bind(15, r.age)
            .Bind(16, r.id.ctime_ns)
            .Bind(17, r.id.inode)
            .Bind(18, r.id.device);
        RETURN_IF_ERROR(insert.Run());
      }
      return absl::OkStatus();
    }));
    scan.files_read += static_cast<int64_t>(end - start);
    if (options.stop_after_files > 0 && scan.files_read >= options.stop_after_files && end < to_read.size()) {
      return absl::AbortedError(absl::StrCat("stopped after reading ", scan.files_read, " file headers (--stop-after ",
                                             options.stop_after_files, "); ", options.state_path,
                                             " keeps them: rerun to go on"));
    }
  }
  // Forget files that are gone, so that the state file does not grow with every export.
  std::vector<std::string> gone;
  for (const auto& [path, record] : known) {
    if (!present.contains(path)) gone.push_back(path);
  }
  if (!gone.empty()) {
    ASSIGN_OR_RETURN(store::Statement erase, db->Prepare("DELETE FROM files WHERE path = ?"));
    RETURN_IF_ERROR(db->InTransaction([&]() -> absl::Status {
      for (const std::string& path : gone) {
        erase.Reset();
        RETURN_IF_ERROR(erase.Bind(1, path).Run());
      }
      return absl::OkStatus();
    }));
  }

  scan.files = std::move(records);
  for (DicomFileRecord& p : walk.problems()) scan.files.push_back(std::move(p));
  std::sort(scan.files.begin(), scan.files.end(),
            [](const DicomFileRecord& a, const DicomFileRecord& b) { return a.path < b.path; });
  return scan;
}

absl::StatusOr<std::map<std::string, StudyLabels>> ParseStudyLabels(const io::CsvTable& table, StudyKey key) {
  const std::string key_name = StudyKeyName(key);
  const std::optional<size_t> key_column = table.ColumnIndex(key_name);
  if (!key_column) {
    return absl::InvalidArgumentError(absl::StrCat(table.source, ":1: no '", key_name, "' column (--key ", key_name,
                                                   "); the columns are: ", absl::StrJoin(table.header, ", ")));
  }
  std::array<size_t, kNumChexpertLabels> label_columns{};
  std::vector<std::string> missing;
  for (int l = 0; l < kNumChexpertLabels; ++l) {
    const std::optional<size_t> c = table.ColumnIndex(kChexpertLabels[l]);
    if (!c) {
      missing.push_back(kChexpertLabels[l]);
    } else {
      label_columns[l] = *c;
    }
  }
  if (!missing.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(table.source, ":1: missing label column(s): ", absl::StrJoin(missing, ", ")));
  }
  std::map<std::string, StudyLabels> labels;
  for (const io::CsvRecord& row : table.rows) {
    const std::string value(absl::StripAsciiWhitespace(row.fields[*key_column]));
    if (value.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(table.source, ":", row.line, ": [", key_name, "] is blank"));
    }
    StudyLabels study;
    study.line = row.line;
    for (int l = 0; l < kNumChexpertLabels; ++l) {
      absl::StatusOr<RawLabel> label = ParseRawLabel(row.fields[label_columns[l]]);
      if (!label.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(table.source, ":", row.line, ": [", kChexpertLabels[l], "] ", label.status().message()));
      }
      study.labels[l] = *label;
    }
    auto [it, inserted] = labels.emplace(value, study);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(table.source, ":", row.line, ": [", key_name, "] '",
                                                     absl::CHexEscape(value), "' is also on line ", it->second.line,
                                                     ": duplicate key"));
    }
  }
  return labels;
}

DicomIndex BuildDicomIndex(const DicomScan& scan, const std::map<std::string, StudyLabels>& labels,
                           const DicomIndexOptions& options) {
  DicomIndex index;
  DicomIndexReport& report = index.report;
  report.dicom_dir = options.dicom_dir;
  report.labels_csv = options.labels_csv;
  report.key = StudyKeyName(options.key);
  report.files_found = static_cast<int64_t>(scan.files.size());
  report.files_read = scan.files_read;
  report.files_reused = scan.files_reused;
  report.state_reset = scan.state_reset;

  struct Image {
    const DicomFileRecord* file;
    View view;
    std::string projection;
  };
  struct StudyImages {
    std::string key;
    std::string first_file;
    std::vector<Image> images;
    std::set<std::string> patients;
    bool frontal = false;
  };
  std::vector<StudyImages> studies;
  absl::flat_hash_map<std::string, size_t> study_of_key;
  absl::flat_hash_map<std::string, std::string> first_with_uid;
  // For each key value, the files that carried it but were left out before joining a study, by where they are
  // listed: a label row whose every file was left out says so, instead of only "without a study".
  std::map<std::string, std::map<std::string, int64_t>> left_out_by_key;
  const auto left_out = [&](const std::string& key, const std::string& where) {
    if (!key.empty()) ++left_out_by_key[key][where];
  };

  for (const DicomFileRecord& f : scan.files) {
    const std::string& file_key = options.key == StudyKey::kAccessionNumber ? f.accession : f.study_uid;
    switch (f.kind) {
      case FileKind::kUnreadable:
      case FileKind::kNotDicom:
        report.unreadable_files.push_back({f.path, "", f.reason});
        left_out(file_key, "unreadable or non-DICOM files");
        continue;
      case FileKind::kNonImage:
        report.non_image_objects.push_back({f.path, "", f.reason});
        left_out(file_key, "non-image objects");
        continue;
      case FileKind::kImage:
        break;
    }
    ++report.images;
    const std::string& key = options.key == StudyKey::kAccessionNumber ? f.accession : f.study_uid;
    if (!f.sop_instance_uid.empty()) {
      auto [it, first] = first_with_uid.emplace(f.sop_instance_uid, f.path);
      if (!first) {
        report.duplicate_instances.push_back(
            {f.path, key, absl::StrCat("same SOP Instance UID ", f.sop_instance_uid, " as ", it->second, " (kept)")});
        left_out(key, "duplicate SOP instances");
        continue;
      }
    }
    const std::string modality = absl::AsciiStrToUpper(f.modality);
    if (!(modality.empty() || modality == "CR" || modality == "DX" || modality == "DR")) {
      report.images_left_out.push_back(
          {f.path, key, absl::StrCat("Modality ", absl::CHexEscape(f.modality), " is not a radiograph (CR, DX)")});
      left_out(key, "images left out: Modality");
      continue;
    }
    if (key.empty()) {
      report.images_left_out.push_back({f.path, "", absl::StrCat("no ", report.key)});
      continue;
    }
    if (f.patient.empty()) {
      report.images_left_out.push_back({f.path, key, "no PatientID"});
      left_out(key, "images left out: no PatientID");
      continue;
    }
    // The study exists even when none of its images has a usable view: it is then reported as without frontal.
    auto [it, inserted] = study_of_key.emplace(key, studies.size());
    if (inserted) studies.push_back(StudyImages{key, f.path, {}, {}, false});
    StudyImages& study = studies[it->second];
    study.patients.insert(f.patient);
    const std::string vp = absl::AsciiStrToUpper(f.view_position);
    Image image{&f, View::kFrontal, ""};
    if (vp == "PA" || vp == "AP") {
      image.projection = vp;
    } else if (vp == "LL" || vp == "RL") {
      image.view = View::kLateral;
      image.projection = vp;
    } else if (vp == "LATERAL" || vp == "LAT") {
      image.view = View::kLateral;
    } else if (options.view_fallback == ViewFallback::kFrontal) {
      image.view = View::kFrontal;
    } else if (options.view_fallback == ViewFallback::kLateral) {
      image.view = View::kLateral;
    } else {
      report.images_left_out.push_back(
          {f.path, key,
           absl::StrCat("ViewPosition '", absl::CHexEscape(f.view_position),
                        "' is neither frontal (PA, AP) nor lateral (LL, RL, LATERAL); see --view-fallback")});
      continue;
    }
    study.images.push_back(image);
    study.frontal = study.frontal || image.view == View::kFrontal;
  }

  std::set<std::string> used_labels;
  absl::flat_hash_set<const DicomFileRecord*> accepted;
  absl::flat_hash_map<const DicomFileRecord*, std::pair<const Image*, const StudyLabels*>> row_of;
  for (const StudyImages& study : studies) {
    const std::string& first_file = study.first_file;
    auto label = labels.find(study.key);
    if (label == labels.end()) {
      report.studies_without_labels.push_back({first_file, study.key, ""});
      continue;
    }
    used_labels.insert(study.key);
    if (study.patients.size() > 1) {
      report.images_left_out.push_back({first_file, study.key,
                                        absl::StrCat("the study's ", study.images.size(), " images name ",
                                                     study.patients.size(), " different PatientIDs: study left out")});
      continue;
    }
    if (!study.frontal) {
      report.studies_without_frontal.push_back({first_file, study.key, ""});
      continue;
    }
    ++report.studies_indexed;
    for (const Image& image : study.images) row_of[image.file] = {&image, &label->second};
  }
  for (const auto& [key, study] : labels) {
    if (used_labels.count(key) == 0) {
      std::string detail = absl::StrCat("line ", study.line);
      if (auto it = left_out_by_key.find(key); it != left_out_by_key.end()) {
        int64_t files = 0;
        std::vector<std::string> where;
        for (const auto& [list, n] : it->second) {
          files += n;
          where.push_back(absl::StrCat(n, " under ", list));
        }
        absl::StrAppend(&detail, "; ", files, files == 1 ? " file carries" : " files carry",
                        " this key, all left out: ", absl::StrJoin(where, ", "));
      }
      report.label_rows_without_study.push_back({options.labels_csv, key, std::move(detail), study.line});
    }
  }
  std::sort(report.label_rows_without_study.begin(), report.label_rows_without_study.end(),
            [](const IndexIssue& a, const IndexIssue& b) { return a.line < b.line; });
  for (const DicomFileRecord& f : scan.files) {
    auto it = row_of.find(&f);
    if (it == row_of.end()) continue;
    const Image& image = *it->second.first;
    ManifestRow row;
    row.path = f.path;
    row.patient = f.patient;
    // The join key is the unit the labels describe, so it is the study (frontal and lateral views together).
    row.study = options.key == StudyKey::kAccessionNumber ? f.accession : f.study_uid;
    row.sex = f.sex == "M" ? Sex::kMale : f.sex == "F" ? Sex::kFemale : Sex::kUnknown;
    row.age = ParseDicomAge(f.age);
    row.view = image.view;
    row.projection = image.projection;
    row.labels = it->second.second->labels;
    index.rows.push_back(std::move(row));
  }
  report.rows = static_cast<int64_t>(index.rows.size());
  return index;
}

absl::StatusOr<DicomIndex> IndexDicomExport(const DicomIndexOptions& options) {
  RETURN_IF_ERROR(CheckOptions(options));
  if (options.labels_csv.empty()) return absl::InvalidArgumentError("--labels: required");
  io::CsvParseOptions csv;
  csv.max_file_bytes = options.max_labels_bytes;
  ASSIGN_OR_RETURN(io::CsvTable table, io::ReadCsvFile(options.labels_csv, csv));
  ASSIGN_OR_RETURN(auto labels, ParseStudyLabels(table, options.key));
  ASSIGN_OR_RETURN(DicomScan scan, ScanDicomFolder(options));
  return BuildDicomIndex(scan, labels, options);
}

namespace {

// `text` with control bytes (which could drive the terminal) as \xNN; other bytes, UTF-8 included, as they are.
std::string Printable(absl::string_view text) {
  std::string out;
  for (const char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7F) {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    } else {
      out += ch;
    }
  }
  return out;
}

void AppendIssues(std::string* out, absl::string_view title, const std::vector<IndexIssue>& issues, int max_listed,
                  const std::function<std::string(const IndexIssue&)>& line) {
  absl::StrAppend(out, title, ": ", issues.size(), "\n");
  for (size_t i = 0; i < issues.size() && static_cast<int>(i) < max_listed; ++i) {
    IndexIssue printable = issues[i];
    printable.file = Printable(printable.file);
    printable.key = Printable(printable.key);
    printable.detail = Printable(printable.detail);
    absl::StrAppend(out, "  ", line(printable), "\n");
  }
  if (static_cast<int>(issues.size()) > max_listed) {
    absl::StrAppend(out, "  ... and ", issues.size() - max_listed, " more (all in --report)\n");
  }
}

}  // namespace

std::string FormatDicomIndexReport(const DicomIndexReport& r, int max_listed) {
  std::string out =
      absl::StrCat("data index: ", r.dicom_dir, ": ", r.files_found, " files (", r.files_read, " headers read, ",
                   r.files_reused, " unchanged from the state file", r.state_reset ? "; state file reset" : "", "), ",
                   r.images, " images\n", "manifest: ", r.rows, " images of ", r.studies_indexed, " studies\n");
  const std::string key = r.key;
  AppendIssues(&out, absl::StrCat("studies without labels in ", r.labels_csv, " (left out)"), r.studies_without_labels,
               max_listed, [&](const IndexIssue& i) { return absl::StrCat(key, " ", i.key, ": e.g. ", i.file); });
  AppendIssues(&out, "label rows without a study in the export", r.label_rows_without_study, max_listed,
               [&](const IndexIssue& i) {
                 // detail: "line N", then "; " and the files of that key that were left out, if any.
                 const size_t note = i.detail.find("; ");
                 return absl::StrCat(
                     i.file, " ", i.detail.substr(0, note), ": ", key, " ", i.key,
                     note == std::string::npos ? "" : absl::StrCat(" (", i.detail.substr(note + 2), ")"));
               });
  AppendIssues(&out, "studies without a frontal view (left out)", r.studies_without_frontal, max_listed,
               [&](const IndexIssue& i) { return absl::StrCat(key, " ", i.key, ": e.g. ", i.file); });
  AppendIssues(&out, "non-image objects skipped", r.non_image_objects, max_listed,
               [](const IndexIssue& i) { return absl::StrCat(i.file, ": ", i.detail); });
  AppendIssues(&out, "duplicate SOP instances (the first by path kept)", r.duplicate_instances, max_listed,
               [](const IndexIssue& i) { return absl::StrCat(i.file, ": ", i.detail); });
  AppendIssues(&out, "unreadable or non-DICOM files", r.unreadable_files, max_listed,
               [](const IndexIssue& i) { return absl::StrCat(i.file, ": ", i.detail); });
  AppendIssues(&out, "images left out", r.images_left_out, max_listed,
               [](const IndexIssue& i) { return absl::StrCat(i.file, ": ", i.detail); });
  return out;
}

std::string DicomIndexReportJson(const DicomIndexReport& r) {
  auto issues = [](const std::vector<IndexIssue>& list) {
    nlohmann::json a = nlohmann::json::array();
    for (const IndexIssue& i : list) {
      // "file" is text (bytes that are not UTF-8 become U+FFFD); "file_escaped" keeps every byte of the name,
      // C-escaped.
      a.push_back({{"file", i.file}, {"file_escaped", absl::CHexEscape(i.file)}, {"key", i.key}, {"detail", i.detail}});
    }
    return a;
  };
  nlohmann::json j = {
      {"dicom_dir", r.dicom_dir},
      {"labels", r.labels_csv},
      {"key", r.key},
      {"files_found", r.files_found},
      {"files_read", r.files_read},
      {"files_reused", r.files_reused},
      {"state_reset", r.state_reset},
      {"images", r.images},
      {"studies_indexed", r.studies_indexed},
      {"rows", r.rows},
      {"studies_without_labels", issues(r.studies_without_labels)},
      {"label_rows_without_study", issues(r.label_rows_without_study)},
      {"studies_without_frontal", issues(r.studies_without_frontal)},
      {"non_image_objects", issues(r.non_image_objects)},
      {"duplicate_instances", issues(r.duplicate_instances)},
      {"unreadable_files", issues(r.unreadable_files)},
      {"images_left_out", issues(r.images_left_out)},
  };
  // Replace invalid UTF-8 (file names are bytes) instead of throwing.
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace fedtune::data
