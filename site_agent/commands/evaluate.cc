#include "site_agent/commands/evaluate.h"

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/data/manifest.h"
#include "common/eval/gallery.h"
#include "common/eval/report_html.h"
#include "common/imaging/preprocess.h"
#include "common/imaging/raster_bits.h"
#include "common/io/csv.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/model/ensemble.h"
#include "common/model/model_input.h"
#include "common/stats/bootstrap.h"
#include "common/status_macros.h"
#include "common/train/site_data.h"

namespace fedtune::agent {
namespace {

// 1 positive, 0 negative or blank, -1 excluded (uncertain).
int TruthOf(data::RawLabel raw) {
  switch (raw) {
    case data::RawLabel::kPositive:
      return 1;
    case data::RawLabel::kUncertain:
      return -1;
    default:
      return 0;
  }
}

std::string SafeFileName(absl::string_view text) {
  std::string out;
  for (char c : text) out.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
  return out;
}

nlohmann::ordered_json ProvenanceJson(const model::Checkpoint& c, const std::string& path) {
  const model::Provenance& p = c.metadata.provenance;
  return {{"path", path},
          {"weights_sha256", c.weights_sha256},
          {"parent_sha256", p.parent_digest},
          {"source", p.source},
          {"epochs", p.epochs},
          {"created_at", p.created_at},
          {"members", c.members.size()},
          {"image_size", c.metadata.image_size}};
}

// A checkpoint and its ensemble.
struct LoadedModel {
  model::Checkpoint checkpoint;
  model::Ensemble ensemble;
};

absl::StatusOr<LoadedModel> LoadModel(const std::string& path) {
  LoadedModel loaded;
  ASSIGN_OR_RETURN(loaded.checkpoint, model::LoadCheckpoint(path));
  ASSIGN_OR_RETURN(loaded.ensemble, model::EnsembleFromCheckpoint(loaded.checkpoint));
  return loaded;
}

// Both models' predictions on the same rows (images, or studies).
struct PairedPredictions {
  std::vector<loader::LoaderSample> samples;  // Every manifest entry, in order.
  // Each prediction row's manifest entry: the image itself, or the study's representative (first frontal) image.
  std::map<std::string, size_t> entry_of;
  ImagePredictions a;
  ImagePredictions b;
};

absl::StatusOr<PairedPredictions> PredictBoth(const EvaluateOptions& options, const data::Manifest& manifest,
                                              LoadedModel& base, LoadedModel& tuned) {
  PairedPredictions p;
  std::vector<size_t> all(manifest.entries().size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  p.samples = loader::SamplesFromManifest(manifest, options.data_root, all, data::LabelPolicy{});
  if (options.study_level) {
    std::vector<size_t> rep_a;
    std::vector<size_t> rep_b;
    ASSIGN_OR_RETURN(p.a, PredictStudies(base.ensemble, base.checkpoint.metadata, manifest, options.data_root,
                                         options.predict, &rep_a));
    ASSIGN_OR_RETURN(p.b, PredictStudies(tuned.ensemble, tuned.checkpoint.metadata, manifest, options.data_root,
                                         options.predict, &rep_b));
    for (size_t r = 0; r < p.a.ids.size(); ++r) p.entry_of[p.a.ids[r]] = rep_a[r];
  } else {
    ASSIGN_OR_RETURN(p.a, PredictImages(base.ensemble, base.checkpoint.metadata, p.samples, options.predict));
    ASSIGN_OR_RETURN(p.b, PredictImages(tuned.ensemble, tuned.checkpoint.metadata, p.samples, options.predict));
    for (size_t i = 0; i < manifest.entries().size(); ++i) p.entry_of[manifest.entries()[i].path] = i;
  }
  if (p.a.ids != p.b.ids) {
    return absl::InternalError("the two models were evaluated on different images (an image became unreadable?)");
  }
  return p;
}

// Per-label cases (uncertain truth excluded): the scores compared, and each case's prediction row.
struct LabelCases {
  std::vector<stats::LabelScores> scores;
  std::vector<std::vector<size_t>> rows_of_label;  // Index into the predictions' ids per case.
};

// Collects the cases of every label (model labels are matched to CheXpert columns by name) and writes
// <out_dir>/predictions.csv (truth, base and fine-tuned score per label and row). InvalidArgument for a model label
// that is no CheXpert column.
absl::StatusOr<LabelCases> CollectCases(const EvaluateOptions& options, const std::vector<std::string>& labels,
                                        const data::Manifest& manifest, const PairedPredictions& p) {
  LabelCases cases;
  cases.scores.resize(labels.size());
  cases.rows_of_label.resize(labels.size());
  std::vector<int> chexpert_index(labels.size(), -1);
  for (size_t l = 0; l < labels.size(); ++l) {
    cases.scores[l].name = labels[l];
    for (int k = 0; k < data::kNumChexpertLabels; ++k) {
      if (labels[l] == data::kChexpertLabels[k]) chexpert_index[l] = k;
    }
    if (chexpert_index[l] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("model label '", labels[l], "' is not a CheXpert column"));
    }
  }
  std::string csv = options.study_level ? "Study" : "Path";
  for (const std::string& label : labels) {
    absl::StrAppend(&csv, ",", io::CsvEscape(label + " truth"), ",", io::CsvEscape(label + " base"), ",",
                    io::CsvEscape(label + " finetuned"));
  }
  csv += "\n";
  for (size_t r = 0; r < p.a.ids.size(); ++r) {
    const data::ManifestEntry& entry = manifest.entries()[p.entry_of.at(p.a.ids[r])];
    absl::StrAppend(&csv, io::CsvEscape(p.a.ids[r]));
    for (size_t l = 0; l < labels.size(); ++l) {
      const int truth = TruthOf(entry.labels[chexpert_index[l]]);
      absl::StrAppendFormat(&csv, ",%s,%.9g,%.9g", truth < 0 ? "" : absl::StrCat(truth), p.a.probabilities[r][l],
                            p.b.probabilities[r][l]);
      if (truth < 0) continue;
      cases.scores[l].truth.push_back(truth);
      cases.scores[l].a.push_back(p.a.probabilities[r][l]);
      cases.scores[l].b.push_back(p.b.probabilities[r][l]);
      cases.rows_of_label[l].push_back(r);
    }
    csv += "\n";
  }
  RETURN_IF_ERROR(io::WriteFileAtomically((std::filesystem::path(options.out_dir) / "predictions.csv").string(), csv));
  return cases;
}

// Grad-CAM of the fine-tuned ensemble on its top-scoring positive-label test images, into <out_dir>/gradcam/ and
// html->gallery.
absl::Status AddGradCamGallery(const EvaluateOptions& options, const LoadedModel& tuned, const PairedPredictions& p,
                               const LabelCases& cases, eval::EvaluationHtmlInputs* html) {
  const std::vector<std::string>& labels = tuned.checkpoint.metadata.labels;
  const imaging::PreprocessOptions preprocess = model::PreprocessFor(tuned.checkpoint.metadata, options.predict.input);
  const std::filesystem::path gradcam = std::filesystem::path(options.out_dir) / "gradcam";
  for (size_t l = 0; l < labels.size() && options.gradcam_per_label > 0; ++l) {
    std::vector<double> label_scores;
    for (size_t r : cases.rows_of_label[l]) label_scores.push_back(p.b.probabilities[r][l]);
    for (size_t rank_index : eval::TopScoringIndices(label_scores, options.gradcam_per_label)) {
      const size_t r = cases.rows_of_label[l][rank_index];
      ASSIGN_OR_RETURN(imaging::PreprocessedImage image,
                       imaging::LoadAndPreprocess(p.samples[p.entry_of.at(p.a.ids[r])].file, preprocess));
      ASSIGN_OR_RETURN(std::string png, eval::EnsembleGradCamOverlayPng(tuned.ensemble.solo->members(), image,
                                                                        preprocess, static_cast<int>(l)));
      const std::string name = absl::StrCat(SafeFileName(labels[l]), "_", html->gallery.size(), ".png");
      RETURN_IF_ERROR(io::WriteFileAtomically((gradcam / name).string(), png));
      html->gallery.push_back({labels[l], p.a.ids[r], p.b.probabilities[r][l], std::move(png)});
    }
  }
  html->gallery_note =
      absl::StrCat("Grad-CAM of the fine-tuned ensemble (mean over members) on the ", options.gradcam_per_label,
                   " highest-scoring test images per label; red = regions that raised the score.");
  return absl::OkStatus();
}

// Writes <out_dir>/report.html (with the gallery already in `html`) and report.json.
absl::Status WriteReports(const EvaluateOptions& options, const model::Checkpoint& base, const model::Checkpoint& tuned,
                          const data::Manifest& manifest, const PairedPredictions& p, const LabelCases& cases,
                          const EvaluateResult& result, eval::EvaluationHtmlInputs* html) {
  const std::filesystem::path out(options.out_dir);
  html->dataset_lines = {
      absl::StrCat("Test manifest: ", options.manifest, " (", result.images,
                   options.study_level ? " studies evaluated, " : " images evaluated, ", manifest.studies().size(),
                   " studies, ", manifest.patients().size(), " patients)"),
      "Truth: 1.0 positive; 0.0 and blank negative; -1.0 (uncertain) excluded per label."};
  html->provenance_lines = {
      absl::StrCat("Base model: ", options.base_model, ", sha256 ", base.weights_sha256, " (",
                   base.metadata.provenance.source, ")"),
      absl::StrCat("Fine-tuned model: ", options.model, ", sha256 ", tuned.weights_sha256, ", parent ",
                   tuned.metadata.provenance.parent_digest, " (", tuned.metadata.provenance.source, ", ",
                   tuned.metadata.provenance.epochs, " epochs)")};
  html->report = result.report;
  html->scores = cases.scores;
  RETURN_IF_ERROR(io::WriteFileAtomically((out / "report.html").string(), eval::RenderEvaluationHtml(*html)));

  nlohmann::ordered_json json = stats::ComparisonReportToJson(result.report);
  json["summary"] = result.summary_line;
  json["dataset"] = {{"manifest", options.manifest},
                     {"level", options.study_level ? "study" : "image"},
                     {"cases", result.images},
                     {"images", manifest.entries().size()},
                     {"studies", manifest.studies().size()},
                     {"patients", manifest.patients().size()},
                     {"skipped_images", p.a.skipped}};
  json["models"] = {{"a", ProvenanceJson(base, options.base_model)}, {"b", ProvenanceJson(tuned, options.model)}};
  return io::WriteFileAtomically((out / "report.json").string(), json.dump(2) + "\n");
}

// `options` with predict.input.raster_bits_stored = -1 (auto) resolved over options.raster_bits_manifest (or the
// evaluated `manifest`).
absl::StatusOr<EvaluateOptions> ResolveRasterBits(EvaluateOptions options, const data::Manifest& manifest) {
  if (options.predict.input.raster_bits_stored != imaging::kRasterBitsStoredAuto) return options;
  data::Manifest sampled = manifest;
  if (!options.raster_bits_manifest.empty()) {
    ASSIGN_OR_RETURN(sampled, data::Manifest::ReadCsv(options.raster_bits_manifest));
  }
  ASSIGN_OR_RETURN(options.predict.input.raster_bits_stored,
                   train::ResolveRasterBitsStoredOver(imaging::kRasterBitsStoredAuto, sampled, options.data_root,
                                                      options.predict.input.max_image_pixels));
  return options;
}

}  // namespace

absl::StatusOr<EvaluateResult> RunEvaluate(const EvaluateOptions& requested) {
  ASSIGN_OR_RETURN(LoadedModel base, LoadModel(requested.base_model));
  ASSIGN_OR_RETURN(LoadedModel tuned, LoadModel(requested.model));
  if (base.checkpoint.metadata.labels != tuned.checkpoint.metadata.labels) {
    return absl::InvalidArgumentError(absl::StrCat(requested.base_model, " and ", requested.model,
                                                   " predict different labels; they cannot be compared"));
  }
  ASSIGN_OR_RETURN(data::Manifest manifest, data::Manifest::ReadCsv(requested.manifest));
  ASSIGN_OR_RETURN(const EvaluateOptions options, ResolveRasterBits(requested, manifest));
  RETURN_IF_ERROR(io::MakeDirectories((std::filesystem::path(options.out_dir) / "gradcam").string()));
  ASSIGN_OR_RETURN(PairedPredictions predictions, PredictBoth(options, manifest, base, tuned));
  ASSIGN_OR_RETURN(LabelCases cases, CollectCases(options, tuned.checkpoint.metadata.labels, manifest, predictions));

  EvaluateResult result;
  result.images = static_cast<int64_t>(predictions.a.ids.size());
  ASSIGN_OR_RETURN(result.report, stats::CompareModels(cases.scores));
  // The mean AUCs' bootstrap CIs: the cases are the prediction rows, so a case's labels are resampled together.
  ASSIGN_OR_RETURN(const stats::MeanAucIntervals intervals,
                   stats::BootstrapMeanAuc(cases.scores, cases.rows_of_label, predictions.a.ids.size()));
  result.report.mean_auc_ci_a = intervals.a;
  result.report.mean_auc_ci_b = intervals.b;
  eval::EvaluationHtmlInputs html;
  html.title = options.title;
  html.model_a_name = "Open-source (base) model";
  html.model_b_name = "Fine-tuned model";
  RETURN_IF_ERROR(AddGradCamGallery(options, tuned, predictions, cases, &html));
  result.summary_line = eval::EvaluationSummaryLine(result.report, html.model_b_name);
  RETURN_IF_ERROR(
      WriteReports(options, base.checkpoint, tuned.checkpoint, manifest, predictions, cases, result, &html));
  return result;
}

namespace {

absl::Status RunEvaluateCommand(const cli::ParsedFlags& flags) {
  EvaluateOptions options;
  options.base_model = flags.GetOrDie("base");
  options.model = flags.GetOrDie("model");
  options.manifest = flags.GetOrDie("manifest");
  options.data_root = flags.GetOrDie("root");
  options.out_dir = flags.GetOrDie("out");
  ASSIGN_OR_RETURN(int64_t k, flags.GetInt("gradcam-per-label", 3));
  ASSIGN_OR_RETURN(int64_t size, flags.GetInt("image-size", 0));
  ASSIGN_OR_RETURN(int64_t threads, flags.GetInt("threads", 0));
  if (k < 0) return absl::InvalidArgumentError("--gradcam-per-label must be >= 0");
  options.gradcam_per_label = static_cast<int>(k);
  options.predict.input.image_size = static_cast<int>(size);
  // auto (-1) is resolved by RunEvaluate over the evaluated manifest.
  ASSIGN_OR_RETURN(options.predict.input.raster_bits_stored,
                   imaging::ParseRasterBitsStoredFlag(flags.GetOrDie("raster-bits-stored")));
  options.predict.device = flags.GetOrDie("device");
  options.predict.on_error = flags.GetBool("skip-unreadable") ? loader::ErrorPolicy::kSkip : loader::ErrorPolicy::kFail;
  const std::string level = flags.GetOrDie("level");
  if (level != "image" && level != "study") {
    return absl::InvalidArgumentError(absl::StrCat("--level must be image or study, got '", level, "'"));
  }
  options.study_level = level == "study";
  if (threads > 0) torch::set_num_threads(static_cast<int>(threads));
  ASSIGN_OR_RETURN(EvaluateResult result, RunEvaluate(options));
  if (!flags.GetBool("quiet")) {
    std::printf("%s\n%s\nreport: %s/report.html\n", result.summary_line.c_str(),
                stats::FormatComparisonTable(result.report).c_str(), options.out_dir.c_str());
  }
  return absl::OkStatus();
}

}  // namespace

cli::Command MakeEvaluateCommand() {
  cli::Command c;
  c.path = {"evaluate"};
  c.summary = "compare the base and fine-tuned models on a test manifest: report.json, report.html, Grad-CAM";
  c.flags = {
      {"base", "the base (open-source) checkpoint", false, true, std::nullopt, "B.ckpt"},
      {"model", "the fine-tuned checkpoint", false, true, std::nullopt, "M.ckpt"},
      {"manifest", "test manifest (CheXpert CSV)", false, true, std::nullopt, "test.csv"},
      {"root", "directory the manifest's paths are relative to", false, true, std::nullopt, "DIR"},
      {"out", "report directory (created)", false, true, std::nullopt, "REPORT_DIR"},
      {"gradcam-per-label", "top-scoring images per label shown with Grad-CAM", false, false, std::string("3"), "K"},
      {"image-size", "input side (default: each checkpoint's)", false, false, std::nullopt, "N"},
      {"device", "auto, cpu, cuda or cuda:N", false, false, std::string("auto"), "D"},
      {"threads", "LibTorch intra-op threads", false, false, std::nullopt, "T"},
      {"skip-unreadable", "skip unreadable images (counted) instead of failing", true},
      {"level", "image: one case per image; study: one per study (DuoNet on two-view studies)", false, false,
       std::string("image"), "L"},
      {"raster-bits-stored",
       "bits stored in 16-bit PNG/TIFF samples: 0 (the container's 16), 8 to 16, or auto (estimated from the "
       "manifest's "
       "images); use what the model was trained with (FinetuneConfig.raster_bits_stored)",
       false, false, std::string("0"), "N|auto"},
      {"quiet", "do not print the summary and table", true},
  };
  c.run = RunEvaluateCommand;
  return c;
}

}  // namespace fedtune::agent
