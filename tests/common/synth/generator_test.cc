#include "common/synth/generator.h"

#include <map>
#include <regex>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/data/chexpert_labels.h"
#include "common/io/csv.h"
#include "common/io/file_util.h"
#include "common/synth/profile.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "opencv2/imgcodecs.hpp"
#include "tests/testing/temp_dir.h"

namespace fedtune::synth {
namespace {

using ::testing::HasSubstr;

SynthOptions Options(const std::string& profile, const std::string& out, int64_t count, uint64_t seed) {
  SynthOptions o;
  auto p = LoadProfile(profile);
  EXPECT_TRUE(p.ok()) << p.status();
  o.profile = *p;
  o.out_dir = out;
  o.count = count;
  o.size = 32;
  o.seed = seed;
  return o;
}

std::string Read(const std::string& path) {
  auto s = io::ReadFile(path);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : "";
}

io::CsvTable ReadCsv(const std::string& path) {
  auto t = io::ReadCsvFile(path);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : io::CsvTable{};
}

int Rank(const std::string& v) { return v.empty() ? 0 : v == "0.0" ? 1 : v == "-1.0" ? 2 : 3; }

TEST(GeneratorTest, SameSeedSameBytesForAnyThreadCountDifferentSeedDiffers) {
  testing::TempDir dir;
  SynthOptions a = Options("site-b", dir.Join("a"), 30, 3);
  a.dicom_fraction = 0.3;
  SynthOptions b = a;
  b.out_dir = dir.Join("b");
  b.threads = 3;
  SynthOptions c = a;
  c.out_dir = dir.Join("c");
  c.seed = 4;
  for (const SynthOptions* o : {&a, &b, &c}) ASSERT_TRUE(GenerateDataset(*o).ok());
  const io::CsvTable manifest = ReadCsv(a.out_dir + "/manifest.csv");
  ASSERT_EQ(manifest.rows.size(), 30u);
  EXPECT_EQ(Read(a.out_dir + "/manifest.csv"), Read(b.out_dir + "/manifest.csv"));
  EXPECT_EQ(Read(a.out_dir + "/truth.csv"), Read(b.out_dir + "/truth.csv"));
  EXPECT_NE(Read(a.out_dir + "/truth.csv"), Read(c.out_dir + "/truth.csv"));
  int dicoms = 0, different = 0;
  for (const io::CsvRecord& row : manifest.rows) {
    const std::string& path = row.fields[0];
    dicoms += path.size() > 4 && path.substr(path.size() - 4) == ".dcm";
    const std::string bytes = Read(a.out_dir + "/" + path);
    ASSERT_FALSE(bytes.empty()) << path;
    EXPECT_EQ(bytes, Read(b.out_dir + "/" + path)) << path;
    auto other = io::ReadFile(c.out_dir + "/" + path);
    different += !other.ok() || *other != bytes;
  }
  EXPECT_GT(dicoms, 2);
  EXPECT_GT(different, 25);
}

TEST(GeneratorTest, ManifestIsCheXpertShapedAndConsistentWithTruth) {
  testing::TempDir dir;
  SynthOptions o = Options("public", dir.Join("out"), 200, 1);
  auto summary = GenerateDataset(o);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->images, 200);
  const io::CsvTable manifest = ReadCsv(o.out_dir + "/manifest.csv");
  const io::CsvTable truth = ReadCsv(o.out_dir + "/truth.csv");
  std::vector<std::string> header = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"};
  for (const char* l : data::kChexpertLabels) header.push_back(l);
  ASSERT_EQ(manifest.header, header);
  ASSERT_EQ(truth.header, header);
  ASSERT_EQ(manifest.rows.size(), 200u);
  ASSERT_EQ(truth.rows.size(), 200u);
  const std::regex path_re(R"(patient(\d{5})/study(\d+)/view(\d)_(frontal|lateral)\.png)");
  const std::set<std::string> values = {"", "0.0", "-1.0", "1.0"};
  std::map<std::string, std::set<std::string>> studies_of_patient;
  std::set<std::string> studies_with_frontal, studies;
  int laterals = 0, ap = 0, pa = 0;
  std::array<int, data::kNumChexpertLabels> reported_positive{}, true_positive{};
  for (size_t r = 0; r < manifest.rows.size(); ++r) {
    const auto& f = manifest.rows[r].fields;
    const auto& t = truth.rows[r].fields;
    std::smatch m;
    ASSERT_TRUE(std::regex_match(f[0], m, path_re)) << f[0];
    ASSERT_EQ(t[0], f[0]);
    EXPECT_FALSE(Read(o.out_dir + "/" + f[0]).empty());
    const std::string study = m[1].str() + "/" + m[2].str();
    studies.insert(study);
    studies_of_patient[m[1].str()].insert(study);
    const bool frontal = m[4].str() == "frontal";
    if (frontal) studies_with_frontal.insert(study);
    EXPECT_EQ(m[3].str() == "1", frontal) << f[0];
    EXPECT_TRUE(f[1] == "Male" || f[1] == "Female");
    const int age = std::stoi(f[2]);
    EXPECT_GE(age, 18);
    EXPECT_LE(age, 92);
    EXPECT_EQ(f[3], frontal ? "Frontal" : "Lateral");
    if (frontal) {
      EXPECT_TRUE(f[4] == "AP" || f[4] == "PA") << f[4];
      ap += f[4] == "AP";
      pa += f[4] == "PA";
    } else {
      EXPECT_EQ(f[4], "");
      ++laterals;
    }
    for (int i = 0; i < data::kNumChexpertLabels; ++i) {
      ASSERT_TRUE(values.count(f[5 + i])) << f[5 + i];
      ASSERT_TRUE(t[5 + i] == "1.0" || t[5 + i] == "0.0") << t[5 + i];
      // What is reported positive is truly present: reporting noise only hides or hedges.
      if (f[5 + i] == "1.0" && i != data::kNoFinding) {
        EXPECT_EQ(t[5 + i], "1.0");
      }
      reported_positive[i] += f[5 + i] == "1.0";
      true_positive[i] += t[5 + i] == "1.0";
    }
    for (const auto& [child, parent] : data::kChexpertHierarchy) {
      EXPECT_GE(Rank(f[5 + parent]), Rank(f[5 + child])) << f[0];
      if (t[5 + child] == "1.0") {
        EXPECT_EQ(t[5 + parent], "1.0") << f[0];
      }
    }
    bool any = false;
    for (int i = 1; i < data::kNumChexpertLabels; ++i) any = any || (i != data::kSupportDevices && t[5 + i] == "1.0");
    EXPECT_EQ(t[5 + data::kNoFinding], any ? "0.0" : "1.0");
  }
  EXPECT_EQ(studies, studies_with_frontal);  // Every study has a frontal view.
  EXPECT_GT(laterals, 10);
  EXPECT_GT(ap, pa);  // Public is mostly AP.
  int multi = 0;
  for (const auto& [patient, s] : studies_of_patient) multi += s.size() > 1;
  EXPECT_GT(multi, 5);  // Several studies per patient sometimes.
  for (int i = 1; i < data::kNumChexpertLabels; ++i) {
    EXPECT_GT(true_positive[i], 5) << data::kChexpertLabels[i];
    EXPECT_LE(reported_positive[i], true_positive[i]) << data::kChexpertLabels[i];
  }
  EXPECT_EQ(summary->studies, static_cast<int64_t>(studies.size()));
  EXPECT_EQ(summary->patients, static_cast<int64_t>(studies_of_patient.size()));
  EXPECT_TRUE(LoadProfile(o.out_dir + "/profile.textproto").ok());
}

TEST(GeneratorTest, PixelsMatchTheRenderingIn8And16BitPngAndDicom) {
  testing::TempDir dir;
  SynthOptions o = Options("site-a", dir.Join("png8"), 24, 5);
  SynthOptions o16 = o;
  o16.out_dir = dir.Join("png16");
  o16.png_bit_depth = 16;
  SynthOptions od = o;
  od.out_dir = dir.Join("dicom");
  od.dicom_fraction = 1.0;
  for (const SynthOptions* x : {&o, &o16, &od}) ASSERT_TRUE(GenerateDataset(*x).ok());
  const auto plan8 = PlanDataset(o.profile, o.count, o.seed, 0);
  const auto plan_dicom = PlanDataset(od.profile, od.count, od.seed, 1.0);
  int monochrome1 = 0;
  for (size_t i = 0; i < plan8.size(); ++i) {
    const cv::Mat expected = RenderPlannedImage(o.profile, plan8[i], o.size);
    const cv::Mat png8 = cv::imread(o.out_dir + "/" + plan8[i].path, cv::IMREAD_UNCHANGED);
    ASSERT_EQ(png8.type(), CV_8UC1);
    cv::Mat f8;
    png8.convertTo(f8, CV_32F, 1 / 255.0);
    EXPECT_LE(cv::norm(f8, expected, cv::NORM_INF), 0.5 / 255 + 1e-6);
    const cv::Mat png16 = cv::imread(o16.out_dir + "/" + plan8[i].path, cv::IMREAD_UNCHANGED);
    ASSERT_EQ(png16.type(), CV_16UC1);
    cv::Mat f16;
    png16.convertTo(f16, CV_32F, 1 / 65535.0);
    EXPECT_LE(cv::norm(f16, expected, cv::NORM_INF), 1e-4);

    // DICOM: decode as PS3.3 prescribes (rescale, LINEAR window, MONOCHROME1 inversion) and compare.
    ASSERT_EQ(plan_dicom[i].path.substr(plan_dicom[i].path.size() - 4), ".dcm");
    DcmFileFormat file;
    ASSERT_TRUE(file.loadFile((od.out_dir + "/" + plan_dicom[i].path).c_str()).good());
    DcmDataset* ds = file.getDataset();
    OFString photometric, sop_class;
    Float64 slope = 0, intercept = 0, center = 0, width = 0;
    Uint16 rows = 0, bits_stored = 0;
    ASSERT_TRUE(ds->findAndGetOFString(DCM_PhotometricInterpretation, photometric).good());
    ASSERT_TRUE(ds->findAndGetOFString(DCM_SOPClassUID, sop_class).good());
    ASSERT_TRUE(ds->findAndGetFloat64(DCM_RescaleSlope, slope).good());
    ASSERT_TRUE(ds->findAndGetFloat64(DCM_RescaleIntercept, intercept).good());
    ASSERT_TRUE(ds->findAndGetFloat64(DCM_WindowCenter, center).good());
    ASSERT_TRUE(ds->findAndGetFloat64(DCM_WindowWidth, width).good());
    ASSERT_TRUE(ds->findAndGetUint16(DCM_Rows, rows).good());
    ASSERT_TRUE(ds->findAndGetUint16(DCM_BitsStored, bits_stored).good());
    EXPECT_EQ(rows, o.size);
    EXPECT_TRUE(bits_stored == 12 || bits_stored == 16);
    EXPECT_EQ(sop_class, "1.2.840.10008.5.1.4.1.1.1");
    const bool mono1 = photometric == "MONOCHROME1";
    EXPECT_TRUE(mono1 || photometric == "MONOCHROME2");
    monochrome1 += mono1;
    const Uint16* pixels = nullptr;
    unsigned long count = 0;
    ASSERT_TRUE(ds->findAndGetUint16Array(DCM_PixelData, pixels, &count).good());
    ASSERT_EQ(count, static_cast<unsigned long>(o.size * o.size));
    double worst = 0;
    for (int y = 0; y < o.size; ++y) {
      for (int x = 0; x < o.size; ++x) {
        const double m = pixels[y * o.size + x] * slope + intercept;
        double v = std::clamp((m - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0);
        if (mono1) v = 1 - v;
        worst = std::max(worst, std::abs(v - expected.at<float>(y, x)));
      }
    }
    EXPECT_LT(worst, 2.5 * slope / width + 1e-4) << plan_dicom[i].path;
  }
  EXPECT_GT(monochrome1, 3);
  EXPECT_LT(monochrome1, 21);
}

TEST(GeneratorTest, SiteProfilesShiftTheImages) {
  // The same plan rendered with different sites' appearance differs strongly in global statistics.
  auto pub = LoadProfile("public");
  ASSERT_TRUE(pub.ok());
  const auto plan = PlanDataset(*pub, 40, 2, 0);
  std::map<std::string, double> mean_lung;
  for (const std::string name : {"public", "site-a", "site-b", "site-c"}) {
    auto p = LoadProfile(name);
    ASSERT_TRUE(p.ok());
    double sum = 0;
    for (const PlannedImage& im : plan) sum += cv::mean(RenderPlannedImage(*p, im, 32))[0];
    mean_lung[name] = sum / plan.size();
  }
  EXPECT_LT(mean_lung["site-a"], mean_lung["public"] - 0.08);  // Dark.
  EXPECT_GT(mean_lung["site-b"], mean_lung["public"] + 0.08);  // Bright.
}

TEST(GeneratorTest, RejectsBadOptions) {
  testing::TempDir dir;
  SynthOptions o = Options("public", dir.Join("x"), 10, 1);
  o.count = 0;
  EXPECT_THAT(GenerateDataset(o).status().message(), HasSubstr("--count"));
  o.count = 10;
  o.size = 4;
  EXPECT_THAT(GenerateDataset(o).status().message(), HasSubstr("--size"));
  o.size = 32;
  o.dicom_fraction = 1.5;
  EXPECT_THAT(GenerateDataset(o).status().message(), HasSubstr("--dicom-fraction"));
  o.dicom_fraction = 0;
  o.png_bit_depth = 12;
  EXPECT_EQ(GenerateDataset(o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::synth

namespace fedtune::synth {
namespace {

std::string DicomString(DcmDataset* ds, const DcmTagKey& tag) {
  OFString value;
  return ds->findAndGetOFString(tag, value).good() ? std::string(value.c_str()) : std::string("<absent>");
}

// `fedtune synth --dicom`: every image as DICOM in a PACS-like layout with the identifiers data index joins on, a
// labels.csv, and one of each special case.
TEST(GeneratorTest, PacsExportHasIdentifiersLabelsAndEverySpecialCase) {
  testing::TempDir dir;
  SynthOptions o = Options("site-a", dir.Join("pacs"), 40, 9);
  o.pacs_export = true;
  o.threads = 2;
  auto summary = GenerateDataset(o);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->dicom_images, 40);
  EXPECT_EQ(summary->extra_dicom_files, 3);
  EXPECT_FALSE(io::FileSize(o.out_dir + "/manifest.csv").value() > 0);  // data index writes it.

  std::vector<PlannedImage> plan = PlanDataset(o.profile, o.count, o.seed, 1.0);
  const PacsExportPlan pacs = PlanPacsExport(plan);
  ASSERT_GE(pacs.blank_view_image, 0);
  ASSERT_GT(pacs.unlabelled_study, 0);
  for (size_t i = 0; i < plan.size(); ++i) {
    SCOPED_TRACE(pacs.paths[i]);
    EXPECT_TRUE(std::regex_match(pacs.paths[i], std::regex(R"(dicom/ST\d{6}/SE00000[12]/IM000001\.dcm)")));
    DcmFileFormat file;
    ASSERT_TRUE(file.loadFile((o.out_dir + "/" + pacs.paths[i]).c_str()).good());
    DcmDataset* ds = file.getDataset();
    EXPECT_EQ(DicomString(ds, DCM_AccessionNumber), pacs.accession[i]);
    EXPECT_EQ(DicomString(ds, DCM_StudyInstanceUID), PlannedStudyUid(o.seed, plan[i]));
    EXPECT_EQ(DicomString(ds, DCM_PatientID), absl::StrFormat("MRN%07d", plan[i].patient));
    const std::string view = DicomString(ds, DCM_ViewPosition);
    if (static_cast<int64_t>(i) == pacs.blank_view_image) {
      EXPECT_EQ(view, "");
    } else {
      EXPECT_EQ(view, plan[i].view == View::kLateral ? "LL" : plan[i].view == View::kFrontalAP ? "AP" : "PA");
    }
  }
  // The non-image objects carry study 1's identifiers and no pixels; the duplicate is the first image's bytes.
  for (const char* path : {"dicom/ST000001/SE000900/IM000001.dcm", "dicom/ST000001/SE000901/IM000001.dcm"}) {
    DcmFileFormat file;
    ASSERT_TRUE(file.loadFile((o.out_dir + "/" + path).c_str()).good()) << path;
    EXPECT_EQ(DicomString(file.getDataset(), DCM_AccessionNumber), "ACC0000001");
    EXPECT_FALSE(file.getDataset()->tagExists(DCM_PixelData));
  }
  EXPECT_EQ(Read(o.out_dir + "/dicom/ST000001/SE000001/IM000002.dcm"), Read(o.out_dir + "/" + pacs.paths[0]));

  // labels.csv: one row per study but the unlabelled one, plus ACC9999999; reported labels of the study.
  const io::CsvTable labels = ReadCsv(o.out_dir + "/labels.csv");
  ASSERT_EQ(static_cast<int>(labels.rows.size()), pacs.studies);
  const size_t acc = *labels.ColumnIndex("AccessionNumber");
  EXPECT_EQ(labels.rows.back().fields[acc], "ACC9999999");
  std::set<std::string> keys;
  for (const io::CsvRecord& row : labels.rows) keys.insert(row.fields[acc]);
  EXPECT_EQ(keys.count(absl::StrFormat("ACC%07d", pacs.unlabelled_study)), 0u);
  EXPECT_EQ(keys.count("ACC0000001"), 1u);
  const size_t cardiomegaly = *labels.ColumnIndex("Cardiomegaly");
  EXPECT_EQ(labels.rows[0].fields[cardiomegaly], ReportedToCsv(plan[0].reported[2]));

  // --dicom leaves the DICOM files of --dicom-fraction as they were: no PACS attributes there.
  SynthOptions plain = Options("site-a", dir.Join("plain"), 4, 9);
  plain.dicom_fraction = 1;
  ASSERT_TRUE(GenerateDataset(plain).ok());
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile((plain.out_dir + "/" + PlanDataset(plain.profile, 4, 9, 1.0)[0].path).c_str()).good());
  EXPECT_FALSE(file.getDataset()->tagExists(DCM_AccessionNumber));
  EXPECT_FALSE(file.getDataset()->tagExists(DCM_SeriesNumber));

  o.dicom_fraction = 0.5;
  EXPECT_THAT(GenerateDataset(o).status().message(), HasSubstr("--dicom-fraction"));
}

}  // namespace
}  // namespace fedtune::synth
