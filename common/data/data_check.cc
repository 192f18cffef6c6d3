#include "common/data/data_check.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <iostream>
#include <set>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/imaging/decode.h"
#include "common/io/csv.h"
#include "common/status_macros.h"

namespace fedtune::data {
namespace {

absl::Status CheckExists(const std::string& file) {
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

// One image to probe and the manifest line it came from.
struct ImageJob {
  int64_t line;
  std::string file;
};

// Probes all jobs on `threads` threads; returns one problem per failed job.
std::vector<ManifestProblem> ProbeAll(const std::vector<ImageJob>& jobs, const DataCheckOptions& options) {
  std::vector<absl::Status> results(jobs.size());
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < jobs.size(); i = next++) {
      absl::Status s = CheckExists(jobs[i].file);
      if (s.ok() && options.decode_images) {
        s = options.probe ? options.probe(jobs[i].file) : ProbeImageFile(jobs[i].file, options.decode);
      }
      results[i] = std::move(s);
    }
  };
  const int threads = std::max<int>(1, std::min<size_t>(options.threads, jobs.size()));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  std::vector<ManifestProblem> problems;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (!results[i].ok()) {
      problems.push_back({jobs[i].line, "Path", std::string(results[i].message())});
    }
  }
  return problems;
}

}  // namespace

absl::Status ProbeImageFile(const std::string& file, const imaging::DecodeOptions& options) {
  RETURN_IF_ERROR(CheckExists(file));
  return imaging::DecodeImage(file, options).status();
}

absl::Status ProbeImageFile(const std::string& file) { return ProbeImageFile(file, imaging::DecodeOptions()); }

absl::StatusOr<DataCheckReport> CheckDataset(const DataCheckOptions& options) {
  if (options.threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("threads must be >= 1, got ", options.threads));
  }
  RETURN_IF_ERROR(imaging::ValidateDecodeOptions(options.decode));
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
  report.problems = std::move(parse.problems);
  for (const io::CsvRecord& row : table.ragged) {
    report.problems.push_back({row.line, "",
                               absl::StrCat("expected ", table.header.size(), " fields as in the header, found ",
                                            row.fields.size(), "; row skipped")});
  }

  for (const Study& study : manifest.studies()) {
    if (!study.frontal.empty()) continue;
    const ManifestEntry& first = manifest.entries()[study.lateral.front()];
    report.problems.push_back(
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
  std::vector<ManifestProblem> image_problems = ProbeAll(jobs, options);
  report.problems.insert(report.problems.end(), image_problems.begin(), image_problems.end());

  std::stable_sort(report.problems.begin(), report.problems.end(),
                   [](const ManifestProblem& a, const ManifestProblem& b) { return a.line < b.line; });
  return report;
}

std::string FormatDataCheckReport(const DataCheckReport& r) {
  std::string out =
      absl::StrCat("manifest ", r.source, ": ", r.rows, " rows, ", r.valid_rows, " well-formed; ", r.patients,
                   " patients, ", r.studies, " studies; ", r.images_checked, " images checked\n");
  if (!r.problems.empty()) {
    absl::StrAppend(&out, "\nproblems (", r.problems.size(), "):\n");
    for (const ManifestProblem& p : r.problems) {
      absl::StrAppend(&out, "  ", FormatProblem(r.source, p), "\n");
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
                  r.ok() ? "OK: no problems found" : absl::StrCat("FAILED: ", r.problems.size(), " problem(s)"), "\n");
  return out;
}

cli::Command MakeDataCheckCommand(std::ostream* out, ImageProbe probe) {
  cli::Command command;
  command.path = {"data", "check"};
  command.summary =
      "Check a CheXpert-format manifest and its images: columns, values, ids, "
      "duplicates, studies without a frontal "
      "view, missing or unreadable images; print every problem with its line "
      "and per-label counts. Exit code 2 when "
      "anything is wrong.";
  command.flags = {
      {"manifest", "CheXpert-format CSV to check", false, true, std::nullopt, "M.csv"},
      {"root", "data root that the manifest's paths are relative to", false, true, std::nullopt, "DIR"},
      {"no-decode", "only check that images exist; do not decode them", true, false, std::nullopt, "VALUE"},
      {"threads", "images decoded in parallel", false, false, "1", "N"},
      {"max-image-pixels",
       "refuse images whose header declares more pixels than N (width x height; DICOM: x frames x samples)", false,
       false, absl::StrCat(imaging::kDefaultMaxImagePixels), "N"},
  };
  command.run = [out, probe](const cli::ParsedFlags& flags) -> absl::Status {
    DataCheckOptions options;
    options.probe = probe;
    options.manifest_path = flags.GetOrDie("manifest");
    options.root = flags.GetOrDie("root");
    options.decode_images = !flags.GetBool("no-decode");
    ASSIGN_OR_RETURN(int64_t threads, flags.GetInt("threads", 1));
    if (threads < 1 || threads > 256) {
      return absl::InvalidArgumentError(absl::StrCat("--threads: expected 1 to 256, got ", threads));
    }
    options.threads = static_cast<int>(threads);
    ASSIGN_OR_RETURN(options.decode.max_pixels, flags.GetInt("max-image-pixels", imaging::kDefaultMaxImagePixels));
    if (options.decode.max_pixels < 1 || options.decode.max_pixels > imaging::kMaxImagePixelsLimit) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--max-image-pixels: expected 1 to ", imaging::kMaxImagePixelsLimit, ", got ", options.decode.max_pixels));
    }
    ASSIGN_OR_RETURN(DataCheckReport report, CheckDataset(options));
    *out << FormatDataCheckReport(report) << std::flush;
    if (!report.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(report.problems.size(), " problem(s) in ", options.manifest_path, " (listed above)"));
    }
    return absl::OkStatus();
  };
  return command;
}

cli::Command MakeDataCheckCommand() { return MakeDataCheckCommand(&std::cout); }

}  // namespace fedtune::data
