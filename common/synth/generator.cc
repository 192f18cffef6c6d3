#include "common/synth/generator.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/io/csv.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/synth/appearance.h"
#include "common/synth/dicom_writer.h"
#include "common/synth/rng.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "google/protobuf/text_format.h"
#include "opencv2/imgcodecs.hpp"

namespace fedtune::synth {
namespace {

// Stream tags for DeriveSeed.
constexpr uint64_t kPlanStream = 0x504c414eULL;
constexpr uint64_t kImageStream = 0x494d4147ULL;
constexpr uint64_t kDicomChoiceStream = 0x4443484fULL;
constexpr uint64_t kAppearanceStream = 0x41505052ULL;
constexpr uint64_t kDicomEncodingStream = 0x4443454eULL;
constexpr uint64_t kUidStream = 0x55494400ULL;
constexpr int kMaxStudiesPerPatient = 5;

int DrawAge(const fedtune::v1::SynthPopulation& pop, Rng& rng) {
  const int lo = pop.age_max() == 0 ? 18 : pop.age_min();
  const int hi = pop.age_max() == 0 ? 90 : pop.age_max();
  const double mean = pop.age_mean() == 0 && pop.age_sd() == 0 ? 60 : pop.age_mean();
  const double sd = pop.age_sd() == 0 && pop.age_mean() == 0 ? 18 : pop.age_sd();
  double age = mean;
  for (int i = 0; i < 100; ++i) {
    age = mean + sd * rng.Normal();
    if (age >= lo && age <= hi + 0.999) break;
  }
  return std::clamp(static_cast<int>(std::floor(age)), lo, hi);
}

std::string CsvHeader() {
  std::string header = "Path,Sex,Age,Frontal/Lateral,AP/PA";
  for (const char* label : data::kChexpertLabels) absl::StrAppend(&header, ",", label);
  return header + "\n";
}

std::string MetadataFields(const PlannedImage& im) {
  const char* ap_pa = im.view == View::kFrontalAP ? "AP" : im.view == View::kFrontalPA ? "PA" : "";
  return absl::StrCat(io::CsvEscape(im.path), ",", im.male ? "Male" : "Female", ",", im.age, ",",
                      IsFrontal(im.view) ? "Frontal" : "Lateral", ",", ap_pa);
}

absl::Status CheckOptions(const SynthOptions& o) {
  if (o.count < 1 || o.count > 10000000) {
    return absl::InvalidArgumentError(absl::StrCat("--count must be in [1, 10000000], got ", o.count));
  }
  if (o.size < 16 || o.size > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("--size must be in [16, 4096], got ", o.size));
  }
  if (!(o.dicom_fraction >= 0 && o.dicom_fraction <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("--dicom-fraction must be in [0, 1], got ", o.dicom_fraction));
  }
  if (o.png_bit_depth != 8 && o.png_bit_depth != 16) {
    return absl::InvalidArgumentError(absl::StrCat("--bit-depth must be 8 or 16, got ", o.png_bit_depth));
  }
  if (o.threads < 1 || o.threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat("--threads must be in [1, 256], got ", o.threads));
  }
  if (o.out_dir.empty()) return absl::InvalidArgumentError("--out must name a folder");
  if (o.pacs_export && o.dicom_fraction != 0) {
    return absl::InvalidArgumentError("--dicom writes every image as DICOM: --dicom-fraction does not apply");
  }
  return absl::OkStatus();
}

// Writes a file atomically but without flushing it: a temporary file renamed over `path`. GenerateDataset flushes
// the whole file system once (syncfs) before it writes the manifest; one fsync per image would cost ~15 ms each.
absl::Status WriteFileRenaming(const std::string& path, absl::string_view bytes) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string error = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", error));
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0 || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string error = std::strerror(errno);
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", error));
  }
  return absl::OkStatus();
}

// Flushes everything written under `dir` to disk.
absl::Status SyncFolder(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open ", dir, ": ", std::strerror(errno)));
  const int rc = ::syncfs(fd);
  const std::string error = std::strerror(errno);
  ::close(fd);
  if (rc != 0) return absl::InternalError(absl::StrCat("cannot flush ", dir, " to disk: ", error));
  return absl::OkStatus();
}

uint64_t StudyKey(uint64_t seed, const PlannedImage& im) {
  return DeriveSeed(seed, kUidStream, (static_cast<uint64_t>(im.patient) << 8) + im.study);
}

DicomAttributes AttributesOf(const SynthOptions& o, const PlannedImage& im, const PacsExportPlan* pacs) {
  DicomAttributes attr;
  attr.patient_id = absl::StrFormat("patient%05d", im.patient);
  attr.patient_sex = im.male ? "M" : "F";
  attr.patient_age = im.age;
  attr.view_position = im.view == View::kFrontalAP ? "AP" : im.view == View::kFrontalPA ? "PA" : "LL";
  const uint64_t study_key = StudyKey(o.seed, im);
  attr.study_uid = MakeUid(study_key, 1);
  attr.series_uid = MakeUid(study_key, 100 + im.view_number);
  attr.sop_instance_uid = MakeUid(DeriveSeed(o.seed, kUidStream, im.index), 2);
  if (pacs != nullptr) {
    attr.patient_id = absl::StrFormat("MRN%07d", im.patient);
    attr.accession_number = pacs->accession[im.index];
    attr.series_number = im.view_number;
    attr.instance_number = 1;
    if (im.index == pacs->blank_view_image) attr.view_position = "";
  }
  return attr;
}

absl::Status WriteImage(const SynthOptions& o, const PlannedImage& im, const PacsExportPlan* pacs) {
  const cv::Mat image = RenderPlannedImage(o.profile, im, o.size);
  const std::string path = absl::StrCat(o.out_dir, "/", im.path);
  if (im.dicom) {
    Rng rng(DeriveSeed(im.seed, kDicomEncodingStream));
    const DicomEncoding encoding = DrawDicomEncoding(rng);
    return WriteDicom(path, image, encoding, AttributesOf(o, im, pacs));
  }
  cv::Mat pixels;
  if (o.png_bit_depth == 16) {
    image.convertTo(pixels, CV_16U, 65535.0);
  } else {
    image.convertTo(pixels, CV_8U, 255.0);
  }
  std::vector<uchar> png;
  try {
    if (!cv::imencode(".png", pixels, png)) {
      return absl::InternalError(absl::StrCat("cannot encode ", path, " as PNG"));
    }
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("cannot encode ", path, " as PNG: ", e.what()));
  }
  return WriteFileRenaming(path, absl::string_view(reinterpret_cast<const char*>(png.data()), png.size()));
}

}  // namespace

std::vector<PlannedImage> PlanDataset(const fedtune::v1::SynthProfile& profile, int64_t count, uint64_t user_seed,
                                      double dicom_fraction) {
  // Mix the profile's name in: `public` and `site-a` with the same --seed must not share patients' draws.
  uint64_t name_hash = 0xcbf29ce484222325ULL;  // FNV-1a.
  for (char ch : profile.name()) name_hash = (name_hash ^ static_cast<unsigned char>(ch)) * 0x100000001b3ULL;
  const uint64_t seed = DeriveSeed(user_seed, name_hash);
  const LabelModel model = MakeLabelModel(profile);
  const auto& pop = profile.population();
  Rng rng(DeriveSeed(seed, kPlanStream));
  std::vector<PlannedImage> plan;
  plan.reserve(count);
  for (int patient = 1; static_cast<int64_t>(plan.size()) < count; ++patient) {
    const bool male = rng.Bernoulli(pop.male_fraction());
    const int base_age = DrawAge(pop, rng);
    int studies = 1;
    while (studies < kMaxStudiesPerPatient && rng.Bernoulli(pop.repeat_study_probability())) ++studies;
    for (int study = 1; study <= studies && static_cast<int64_t>(plan.size()) < count; ++study) {
      PlannedImage base;
      base.patient = patient;
      base.study = study;
      base.male = male;
      base.age = base_age + (study - 1) / 2;
      base.truth = SampleTrueLabels(model, rng);
      base.reported = ReportLabels(model, base.truth.present, rng);
      const View frontal = rng.Bernoulli(pop.ap_fraction()) ? View::kFrontalAP : View::kFrontalPA;
      const bool lateral = rng.Bernoulli(pop.lateral_fraction());
      for (int v = 1; v <= (lateral ? 2 : 1) && static_cast<int64_t>(plan.size()) < count; ++v) {
        PlannedImage im = base;
        im.index = static_cast<int64_t>(plan.size());
        im.view_number = v;
        im.view = v == 1 ? frontal : View::kLateral;
        im.seed = DeriveSeed(seed, kImageStream, im.index);
        im.dicom = Rng(DeriveSeed(seed, kDicomChoiceStream, im.index)).Uniform() < dicom_fraction;
        im.path = absl::StrFormat("patient%05d/study%d/view%d_%s.%s", patient, study, v, v == 1 ? "frontal" : "lateral",
                                  im.dicom ? "dcm" : "png");
        plan.push_back(std::move(im));
      }
    }
  }
  return plan;
}

cv::Mat RenderPlannedImage(const fedtune::v1::SynthProfile& profile, const PlannedImage& image, int size) {
  Rng rng(DeriveSeed(image.seed, kAppearanceStream));
  const AppearanceParams params = DrawAppearance(profile, rng);
  PhantomSpec spec;
  spec.view = image.view;
  spec.findings = image.truth.present;
  spec.own_sign = image.truth.own;
  spec.male = image.male;
  spec.sign_strength = params.sign_strength;
  spec.seed = image.seed;
  return ApplyAppearance(RenderPhantom(spec, size), params);
}

std::string PlannedStudyUid(uint64_t seed, const PlannedImage& image) { return MakeUid(StudyKey(seed, image), 1); }

PacsExportPlan PlanPacsExport(const std::vector<PlannedImage>& plan) {
  PacsExportPlan pacs;
  for (size_t i = 0; i < plan.size(); ++i) {
    const PlannedImage& im = plan[i];
    if (im.view_number == 1) ++pacs.studies;
    pacs.study_number.push_back(pacs.studies);
    pacs.accession.push_back(absl::StrFormat("ACC%07d", pacs.studies));
    pacs.paths.push_back(absl::StrFormat("dicom/ST%06d/SE%06d/IM%06d.dcm", pacs.studies, im.view_number, 1));
    if (pacs.blank_view_image < 0 && pacs.studies > 1 && im.view_number == 2) {
      pacs.blank_view_image = static_cast<int64_t>(i) - 1;
    }
  }
  const int blank_study = pacs.blank_view_image < 0 ? 0 : pacs.study_number[pacs.blank_view_image];
  if (pacs.studies >= 3 && pacs.studies != blank_study) pacs.unlabelled_study = pacs.studies;
  return pacs;
}

std::string PacsLabelsCsv(const std::vector<PlannedImage>& plan, const PacsExportPlan& pacs, uint64_t seed) {
  std::string out = "AccessionNumber,StudyInstanceUID";
  for (const char* label : data::kChexpertLabels) absl::StrAppend(&out, ",", label);
  out += ",Reader\n";
  for (size_t i = 0; i < plan.size(); ++i) {
    const PlannedImage& im = plan[i];
    if (im.view_number != 1 || pacs.study_number[i] == pacs.unlabelled_study) continue;
    absl::StrAppend(&out, pacs.accession[i], ",", PlannedStudyUid(seed, im));
    for (Reported r : im.reported) absl::StrAppend(&out, ",", ReportedToCsv(r));
    out += ",synth\n";
  }
  // A study the export lacks (e.g. not yet archived).
  absl::StrAppend(&out, "ACC9999999,", MakeUid(DeriveSeed(seed, kUidStream, 0x4e4f5354ULL), 1));
  for (int l = 0; l < data::kNumChexpertLabels; ++l) out += l == 0 ? ",1.0" : ",";
  out += ",synth\n";
  return out;
}

std::string ManifestCsv(const std::vector<PlannedImage>& plan) {
  std::string out = CsvHeader();
  for (const PlannedImage& im : plan) {
    absl::StrAppend(&out, MetadataFields(im));
    for (Reported r : im.reported) absl::StrAppend(&out, ",", ReportedToCsv(r));
    out += "\n";
  }
  return out;
}

std::string TruthCsv(const std::vector<PlannedImage>& plan) {
  std::string out = CsvHeader();
  for (const PlannedImage& im : plan) {
    absl::StrAppend(&out, MetadataFields(im));
    for (bool present : im.truth.present) absl::StrAppend(&out, ",", present ? "1.0" : "0.0");
    out += "\n";
  }
  return out;
}

absl::StatusOr<SynthSummary> GenerateDataset(const SynthOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(CheckOptions(o));
  std::vector<PlannedImage> plan = PlanDataset(o.profile, o.count, o.seed, o.pacs_export ? 1.0 : o.dicom_fraction);
  PacsExportPlan pacs;
  if (o.pacs_export) {
    pacs = PlanPacsExport(plan);
    for (size_t i = 0; i < plan.size(); ++i) plan[i].path = pacs.paths[i];
  }
  SynthSummary summary;
  std::set<std::string> dirs;
  std::set<int> patients;
  for (const PlannedImage& im : plan) {
    dirs.insert(im.path.substr(0, im.path.rfind('/')));
    patients.insert(im.patient);
    summary.dicom_images += im.dicom;
    summary.lateral_images += !IsFrontal(im.view);
    if (im.view_number == 1) {
      ++summary.studies;
      for (int i = 0; i < data::kNumChexpertLabels; ++i) summary.true_positive_studies[i] += im.truth.present[i];
    }
  }
  summary.images = static_cast<int64_t>(plan.size());
  summary.patients = static_cast<int64_t>(patients.size());
  const std::string sr_path = "dicom/ST000001/SE000900/IM000001.dcm";
  const std::string pr_path = "dicom/ST000001/SE000901/IM000001.dcm";
  if (o.pacs_export) {
    dirs.insert("dicom/ST000001/SE000900");
    dirs.insert("dicom/ST000001/SE000901");
  }
  RETURN_IF_ERROR(io::MakeDirectories(o.out_dir));
  for (const std::string& dir : dirs) RETURN_IF_ERROR(io::MakeDirectories(absl::StrCat(o.out_dir, "/", dir)));

  // Workers take images in index order; each image's bytes depend only on its own plan entry.
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<absl::Status> errors(o.threads);
  auto work = [&](int worker) {
    for (int64_t i = next++; i < static_cast<int64_t>(plan.size()) && !failed; i = next++) {
      absl::Status status = WriteImage(o, plan[i], o.pacs_export ? &pacs : nullptr);
      if (!status.ok()) {
        errors[worker] = status;
        failed = true;
        return;
      }
    }
  };
  std::vector<std::thread> workers;
  for (int t = 1; t < o.threads; ++t) workers.emplace_back(work, t);
  work(0);
  for (std::thread& t : workers) t.join();
  for (const absl::Status& e : errors) RETURN_IF_ERROR(e);
  if (o.pacs_export) {
    // The non-image objects of study 1, and the first image exported twice.
    DicomAttributes attr = AttributesOf(o, plan[0], &pacs);
    const uint64_t study_key = StudyKey(o.seed, plan[0]);
    attr.series_uid = MakeUid(study_key, 900);
    attr.series_number = 900;
    attr.sop_instance_uid = MakeUid(study_key, 901);
    RETURN_IF_ERROR(WriteDicomNonImage(absl::StrCat(o.out_dir, "/", sr_path), UID_BasicTextSRStorage, "SR", attr));
    attr.series_uid = MakeUid(study_key, 910);
    attr.series_number = 901;
    attr.sop_instance_uid = MakeUid(study_key, 911);
    RETURN_IF_ERROR(WriteDicomNonImage(absl::StrCat(o.out_dir, "/", pr_path),
                                       UID_GrayscaleSoftcopyPresentationStateStorage, "PR", attr));
    RETURN_IF_ERROR(io::CopyFileAtomically(absl::StrCat(o.out_dir, "/", plan[0].path),
                                           absl::StrCat(o.out_dir, "/dicom/ST000001/SE000001/IM000002.dcm")));
    summary.extra_dicom_files = 3;
    RETURN_IF_ERROR(SyncFolder(o.out_dir));
    std::string profile_text;
    google::protobuf::TextFormat::PrintToString(o.profile, &profile_text);
    RETURN_IF_ERROR(io::WriteFileAtomically(absl::StrCat(o.out_dir, "/profile.textproto"), profile_text));
    RETURN_IF_ERROR(io::WriteFileAtomically(absl::StrCat(o.out_dir, "/labels.csv"), PacsLabelsCsv(plan, pacs, o.seed)));
    summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return summary;
  }
  RETURN_IF_ERROR(SyncFolder(o.out_dir));

  std::string profile_text;
  google::protobuf::TextFormat::PrintToString(o.profile, &profile_text);
  RETURN_IF_ERROR(io::WriteFileAtomically(absl::StrCat(o.out_dir, "/profile.textproto"), profile_text));
  RETURN_IF_ERROR(io::WriteFileAtomically(absl::StrCat(o.out_dir, "/truth.csv"), TruthCsv(plan)));
  RETURN_IF_ERROR(io::WriteFileAtomically(absl::StrCat(o.out_dir, "/manifest.csv"), ManifestCsv(plan)));
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace fedtune::synth
