#include "common/data/data_check.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <set>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/io/csv.h"
#include "common/status_macros.h"

namespace fedtune::data {
namespace {

// One image to probe and the manifest line it came from.
struct ImageJob {
  int64_t line;
  std::string file;
};

// Keeps the first kMaxListedManifestProblems problems by line (ties: first
// added) and counts the others, so that a report over millions of bad rows
// stays small. Deterministic for a given order of Add calls.
class ProblemCollector {
 public:
  void Add(ManifestProblem problem) {
    ++total_;
    Entry entry{problem.line, next_seq_++, std::move(problem)};
    if (kept_.size() < static_cast<size_t>(kMaxListedManifestProblems)) {
      kept_.push_back(std::move(entry));
      std::push_heap(kept_.begin(), kept_.end(), Before);
    } else if (Before(entry, kept_.front())) {
      std::pop_heap(kept_.begin(), kept_.end(), Before);
      kept_.back() = std::move(entry);
      std::push_heap(kept_.begin(), kept_.end(), Before);
    }
  }
  // Problems found and counted elsewhere, not listed.
  void AddUnlisted(int64_t count) { total_ += count; }

  // The kept problems in line order; *unlisted = the others.
  std::vector<ManifestProblem> Take(int64_t* unlisted) {
    std::sort_heap(kept_.begin(), kept_.end(), Before);
    std::vector<ManifestProblem> out;
    out.reserve(kept_.size());
    for (Entry& e : kept_) out.push_back(std::move(e.problem));
    *unlisted = total_ - static_cast<int64_t>(out.size());
    kept_.clear();
    return out;
  }

 private:
  struct Entry {
    int64_t line;
    int64_t seq;
    ManifestProblem problem;
  };
  static bool Before(const Entry& a, const Entry& b) { return a.line != b.line ? a.line < b.line : a.seq < b.seq; }

  std::vector<Entry> kept_;  // A max-heap by (line, seq): front() is the last kept.
  int64_t next_seq_ = 0;
  int64_t total_ = 0;
};

// Probes all jobs on `threads` threads, adding one problem per failed job in
// job order. Chunked, so that at most one chunk's statuses exist at a time.
void ProbeAll(const std::vector<ImageJob>& jobs, const DataCheckOptions& options, ProblemCollector* problems) {
  constexpr size_t kChunk = 4096;
  for (size_t begin = 0; begin < jobs.size(); begin += kChunk) {
    const size_t end = std::min(jobs.size(), begin + kChunk);
    std::vector<absl::Status> results(end - begin);
    std::atomic<size_t> next{begin};
    auto worker = [&] {
      for (size_t i = next++; i < end; i = next++) {
        absl::Status s = CheckImageFileExists(jobs[i].file);
        if (s.ok() && options.decode_images) s = options.probe(jobs[i].file);
        results[i - begin] = std::move(s);
      }
    };
    const int threads = std::max<int>(1, std::min<size_t>(options.threads, end - begin));
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
    worker();
    for (std::thread& t : pool) t.join();
    for (size_t i = begin; i < end; ++i) {
      if (!results[i - begin].ok()) problems->Add({jobs[i].line, "Path", std::string(results[i - begin].message())});
    }
  }
}

}  // namespace

absl::Status CheckImageFileExists(const std::string& file) {
  std::error_code ec;
  const auto status = std::filesystem::status(file, ec);
  if (ec || !std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat("image not found: ", file));
  }
  if (!std::filesystem::is_regular_file(status)) {
    return absl::InvalidArgumentError(absl::StrCat("not a regular file: ", file));
  }
  return absl::OkStatus();
}

absl::StatusOr<DataCheckReport> CheckDataset(const DataCheckOptions& options) {
  if (options.threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("threads must be >= 1, got ", options.threads));
  }
  if (options.decode_images && !options.probe) {
    return absl::InvalidArgumentError("decoding images needs an image probe (DataCheckOptions.probe)");
  }
  io::CsvParseOptions csv_options;
  csv_options.keep_ragged_records = true;  // Reported below with the other problems, not fatal.
  ASSIGN_OR_RETURN(io::CsvTable table, io::ReadCsvFile(options.manifest_path, csv_options));
  ManifestParse parse = ParseManifest(table);
  const Manifest& manifest = parse.manifest;

  DataCheckReport report;
  report.source = options.manifest_path;
  report.rows = table.rows.size() + table.ragged.size();
  report.valid_rows = manifest.entries().size();
  report.patients = manifest.patients().size();
  report.studies = manifest.studies().size();
  report.label_counts = CountLabelValues(manifest.entries());
  report.warnings = std::move(parse.warnings);
  ProblemCollector problems;
  for (ManifestProblem& p : parse.problems) problems.Add(std::move(p));
  problems.AddUnlisted(parse.unlisted_problems);
  for (const io::CsvRecord& row : table.ragged) {
    problems.Add({row.line, "",
                  absl::StrCat("expected ", table.header.size(), " fields as in the header, found ", row.fields.size(),
                               "; row skipped")});
  }

  for (const Study& study : manifest.studies()) {
    if (!study.frontal.empty()) continue;
    const ManifestEntry& first = manifest.entries()[study.lateral.front()];
    problems.Add(
        {first.line, "Frontal/Lateral",
         absl::StrCat("study ", study.study_id, " has no frontal image (", study.lateral.size(), " lateral)")});
  }

  // Every row with a usable path gets its image checked, rejected rows
  // included; each file once.
  std::vector<ImageJob> jobs;
  std::set<std::string> seen;
  auto add_job = [&](const ManifestEntry& e) {
    if (!ValidateManifestPath(e.path).ok()) return;
    const std::string file = ResolveImagePath(options.root, e.path);
    const std::string key = std::filesystem::path(file).lexically_normal();
    if (seen.insert(key).second) jobs.push_back({e.line, file});
  };
  for (const ManifestEntry& e : manifest.entries()) add_job(e);
  for (const ManifestEntry& e : parse.rejected) add_job(e);
  report.images_checked = jobs.size();
  ProbeAll(jobs, options, &problems);
  report.problems = problems.Take(&report.unlisted_problems);
  return report;
}

std::string FormatDataCheckReport(const DataCheckReport& r) {
  std::string out =
      absl::StrCat("manifest ", r.source, ": ", r.rows, " rows, ", r.valid_rows, " well-formed; ", r.patients,
                   " patients, ", r.studies, " studies; ", r.images_checked, " images checked\n");
  if (!r.ok()) {
    absl::StrAppend(&out, "\nproblems (", r.problem_count(), "):\n");
    for (const ManifestProblem& p : r.problems) {
      absl::StrAppend(&out, "  ", FormatProblem(r.source, p), "\n");
    }
    if (r.unlisted_problems > 0) {
      absl::StrAppend(&out, "  ... and ", r.unlisted_problems, " more, not listed (the first ", r.problems.size(),
                      " by line are)\n");
    }
  }
  if (!r.warnings.empty()) {
    absl::StrAppend(&out, "\nwarnings (", r.warnings.size(), "):\n");
    for (const ManifestProblem& p : r.warnings) {
      absl::StrAppend(&out, "  ", FormatProblem(r.source, p), "\n");
    }
  }
  absl::StrAppendFormat(&out, "\nlabel counts over %d well-formed rows:\n%-28s %9s %9s %9s %9s\n", r.valid_rows,
                        "label", "positive", "negative", "uncertain", "blank");
  for (int l = 0; l < kNumChexpertLabels; ++l) {
    const LabelValueCounts& c = r.label_counts[l];
    absl::StrAppendFormat(&out, "%-28s %9d %9d %9d %9d\n", kChexpertLabels[l], c.positive, c.negative, c.uncertain,
                          c.blank);
  }
  absl::StrAppend(&out, "\n",
                  r.ok() ? "OK: no problems found" : absl::StrCat("FAILED: ", r.problem_count(), " problem(s)"), "\n");
  return out;
}

}  // namespace fedtune::data
