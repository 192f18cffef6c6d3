#include "tests/common/imaging/hostile_images.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <typeinfo>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "dcmtk/config/osconfig.h"  // Must come first among DCMTK headers.
#include "dcmtk/dcmdata/dctk.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define FEDTUNE_HOSTILE_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define FEDTUNE_HOSTILE_SANITIZED 1
#endif
#endif

namespace fedtune::imaging::hostile {
namespace {

std::string Encode(const std::string& ext, const cv::Mat& m) {
  std::vector<uchar> out;
  CHECK(cv::imencode(ext, m, out)) << ext;
  return std::string(out.begin(), out.end());
}

void PutBe(std::string* s, size_t at, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) (*s)[at + i] = static_cast<char>((v >> (8 * (n - 1 - i))) & 0xFF);
}
void PutLe(std::string* s, size_t at, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) (*s)[at + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}
uint64_t GetLe(const std::string& s, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(s[at + i]);
  return v;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  CHECK(in) << path;
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

int64_t StatmKb(int field) {
  std::ifstream in("/proc/self/statm");
  int64_t values[2] = {0, 0};
  in >> values[0] >> values[1];
  return values[field] * (::sysconf(_SC_PAGESIZE) / 1024);
}

}  // namespace

std::string PngDeclaring(uint32_t width, uint32_t height, int depth, int channels) {
  cv::Mat m(4, 4, CV_MAKETYPE(depth == 16 ? CV_16U : CV_8U, channels), cv::Scalar::all(100));
  std::string png = Encode(".png", m);
  CHECK_EQ(png.compare(12, 4, "IHDR"), 0);
  PutBe(&png, 16, width, 4);
  PutBe(&png, 20, height, 4);
  const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(png.data() + 12), 4 + 13);
  PutBe(&png, 29, crc, 4);
  return png;
}

std::string JpegDeclaring(uint16_t width, uint16_t height, int channels) {
  cv::Mat m(8, 8, CV_MAKETYPE(CV_8U, channels), cv::Scalar::all(100));
  std::string jpeg = Encode(".jpg", m);
  // Walk the marker segments to SOF0.
  size_t pos = 2;
  while (pos + 4 < jpeg.size()) {
    CHECK_EQ(static_cast<uint8_t>(jpeg[pos]), 0xFF);
    const uint8_t marker = static_cast<uint8_t>(jpeg[pos + 1]);
    const size_t length = (static_cast<uint8_t>(jpeg[pos + 2]) << 8) | static_cast<uint8_t>(jpeg[pos + 3]);
    if (marker == 0xC0) {
      PutBe(&jpeg, pos + 5, height, 2);
      PutBe(&jpeg, pos + 7, width, 2);
      return jpeg;
    }
    pos += 2 + length;
  }
  LOG(FATAL) << "no SOF0 in OpenCV's JPEG";
  return "";
}

std::string TiffDeclaring(uint16_t width, uint16_t height) {
  cv::Mat m(4, 4, CV_16UC1, cv::Scalar(1000));
  std::string tiff = Encode(".tiff", m);
  CHECK_EQ(tiff.substr(0, 4), std::string("II*\0", 4));
  const size_t ifd = GetLe(tiff, 4, 4);
  const size_t count = GetLe(tiff, ifd, 2);
  for (size_t i = 0; i < count; ++i) {
    const size_t entry = ifd + 2 + 12 * i;
    const uint64_t tag = GetLe(tiff, entry, 2);
    const uint64_t type = GetLe(tiff, entry + 2, 2);
    const int size = type == 3 ? 2 : 4;
    if (tag == 256) PutLe(&tiff, entry + 8, width, size);
    if (tag == 257) PutLe(&tiff, entry + 8, height, size);
    if (tag == 278) PutLe(&tiff, entry + 8, size == 2 ? 0xFFFF : 0xFFFFFFFF, size);  // One strip.
  }
  return tiff;
}

std::string BmpDeclaring(int32_t width, int32_t height) {
  cv::Mat m(4, 4, CV_8UC3, cv::Scalar::all(100));
  std::string bmp = Encode(".bmp", m);
  CHECK_GE(GetLe(bmp, 14, 4), 40u);
  PutLe(&bmp, 18, static_cast<uint32_t>(width), 4);
  PutLe(&bmp, 22, static_cast<uint32_t>(height), 4);
  return bmp;
}

void WriteDicomDeclaring(const std::string& path, uint16_t rows, uint16_t columns, size_t pixel_values) {
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  OFCondition c = ds->putAndInsertString(DCM_SOPClassUID, UID_SecondaryCaptureImageStorage);
  if (c.good()) c = ds->putAndInsertString(DCM_SOPInstanceUID, "2.25.1234");
  if (c.good()) c = ds->putAndInsertUint16(DCM_SamplesPerPixel, 1);
  if (c.good()) c = ds->putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2");
  if (c.good()) c = ds->putAndInsertUint16(DCM_Rows, rows);
  if (c.good()) c = ds->putAndInsertUint16(DCM_Columns, columns);
  if (c.good()) c = ds->putAndInsertUint16(DCM_BitsAllocated, 16);
  if (c.good()) c = ds->putAndInsertUint16(DCM_BitsStored, 16);
  if (c.good()) c = ds->putAndInsertUint16(DCM_HighBit, 15);
  if (c.good()) c = ds->putAndInsertUint16(DCM_PixelRepresentation, 0);
  std::vector<Uint16> pixels(pixel_values);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<Uint16>(i * 997);
  if (c.good())
    c = ds->putAndInsertUint16Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size()));
  if (c.good()) c = file.saveFile(path.c_str(), EXS_LittleEndianExplicit);
  CHECK(c.good()) << path << ": " << c.text();
}

void WriteDicomWithSize(const std::string& from, const std::string& to, uint16_t rows, uint16_t columns) {
  DcmFileFormat file;
  OFCondition c = file.loadFile(from.c_str());
  DcmDataset* ds = file.getDataset();
  const E_TransferSyntax xfer = ds->getOriginalXfer();
  if (c.good()) c = ds->putAndInsertUint16(DCM_Rows, rows);
  if (c.good()) c = ds->putAndInsertUint16(DCM_Columns, columns);
  if (c.good()) c = file.saveFile(to.c_str(), xfer);
  CHECK(c.good()) << from << " -> " << to << ": " << c.text();
}

void WriteDeflateBomb(const std::string& path, uint32_t inflated_bytes) {
  WriteDicomDeclaring(path, 4, 4, 16);
  {
    DcmFileFormat file;
    CHECK(file.loadFile(path.c_str()).good());
    CHECK(file.saveFile(path.c_str(), EXS_DeflatedLittleEndianExplicit).good());
  }
  const std::string small = ReadAll(path);
  // Preamble (128), "DICM", then (0002,0000) UL: tag, VR, length 4, the group's length.
  CHECK_EQ(small.compare(128, 4, "DICM"), 0);
  const size_t body_at = 132 + 12 + GetLe(small, 132 + 8, 4);
  // Inflate the dataset, append the private element, deflate it all again.
  std::string body;
  {
    z_stream z{};
    CHECK_EQ(inflateInit2(&z, -15), Z_OK);
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(small.data() + body_at));
    z.avail_in = static_cast<uInt>(small.size() - body_at);
    char buf[4096];
    int rc = Z_OK;
    while (rc == Z_OK) {
      z.next_out = reinterpret_cast<Bytef*>(buf);
      z.avail_out = sizeof(buf);
      rc = inflate(&z, Z_NO_FLUSH);
      body.append(buf, sizeof(buf) - z.avail_out);
    }
    CHECK_EQ(rc, Z_STREAM_END);
    inflateEnd(&z);
  }
  // (7FE1,0010) LO "FEDTUNE " then (7FE1,1000) OB of inflated_bytes zeros.
  body += std::string(
      "\xE1\x7F\x10\x00LO\x08\x00"
      "FEDTUNE ",
      16);
  std::string header("\xE1\x7F\x00\x10OB\x00\x00\x00\x00\x00\x00", 12);
  PutLe(&header, 8, inflated_bytes, 4);
  body += header;

  std::string out = small.substr(0, body_at);
  z_stream z{};
  CHECK_EQ(deflateInit2(&z, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY), Z_OK);
  std::vector<char> zeros(1 << 20, 0);
  std::vector<char> buf(1 << 16);
  auto feed = [&](const char* data, size_t n, int flush) {
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data));
    z.avail_in = static_cast<uInt>(n);
    do {
      z.next_out = reinterpret_cast<Bytef*>(buf.data());
      z.avail_out = static_cast<uInt>(buf.size());
      deflate(&z, flush);
      out.append(buf.data(), buf.size() - z.avail_out);
    } while (z.avail_out == 0 || (flush == Z_FINISH && z.avail_in > 0));
  };
  feed(body.data(), body.size(), Z_NO_FLUSH);
  for (uint32_t left = inflated_bytes; left > 0;) {
    const uint32_t n = std::min<uint32_t>(left, static_cast<uint32_t>(zeros.size()));
    feed(zeros.data(), n, Z_NO_FLUSH);
    left -= n;
  }
  feed(nullptr, 0, Z_FINISH);
  deflateEnd(&z);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(out.data(), static_cast<std::streamsize>(out.size()));
  CHECK(f.good()) << path;
}

ChildOutcome RunInChildWithMemoryLimit(const std::function<absl::Status()>& call, int64_t headroom_bytes,
                                       int64_t max_file_bytes) {
  int fds[2];
  CHECK_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  CHECK_GE(pid, 0);
  if (pid == 0) {
    ::close(fds[0]);
#ifndef FEDTUNE_HOSTILE_SANITIZED
    const rlim_t limit = static_cast<rlim_t>(StatmKb(0)) * 1024 + static_cast<rlim_t>(headroom_bytes);
    struct rlimit rl = {limit, limit};
    ::setrlimit(RLIMIT_AS, &rl);
#else
    (void)headroom_bytes;
#endif
    if (max_file_bytes > 0) {
      struct rlimit fsize = {static_cast<rlim_t>(max_file_bytes), static_cast<rlim_t>(max_file_bytes)};
      ::setrlimit(RLIMIT_FSIZE, &fsize);
    }
    const int64_t rss_before = StatmKb(1);
    const auto start = std::chrono::steady_clock::now();
    // An exception escaping the decoder would end the program: report it as the child's death, and never let it
    // unwind into the test framework's copy in this child.
    absl::Status status;
    try {
      status = call();
    } catch (const std::exception& e) {
      const std::string what = absl::StrCat("threw ", typeid(e).name(), ": ", e.what());
      (void)!::write(fds[1], what.data(), what.size());
      ::_exit(3);
    } catch (...) {
      ::_exit(4);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    struct rusage usage;
    ::getrusage(RUSAGE_SELF, &usage);
    const std::string report = absl::StrCat(static_cast<int>(status.code()), "\n", seconds, "\n",
                                            usage.ru_maxrss - rss_before, "\n", status.message());
    size_t written = 0;
    while (written < report.size()) {
      const ssize_t n = ::write(fds[1], report.data() + written, report.size() - written);
      if (n <= 0) break;
      written += static_cast<size_t>(n);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string report;
  char buf[4096];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool timed_out = false;
  while (true) {
    struct pollfd p = {fds[0], POLLIN, 0};
    const int remaining_ms = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
    if (remaining_ms <= 0 || ::poll(&p, 1, remaining_ms) == 0) {
      timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    const ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n <= 0) break;
    report.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int wstatus = 0;
  ::waitpid(pid, &wstatus, 0);
  ChildOutcome outcome;
  if (timed_out) {
    outcome.how = "timed out after 120 s (killed)";
    return outcome;
  }
  if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 3) {
    outcome.how = report;  // "threw ...": would have ended the program.
    return outcome;
  }
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    outcome.how = WIFSIGNALED(wstatus)
                      ? absl::StrCat("killed by signal ", WTERMSIG(wstatus), " (", ::strsignal(WTERMSIG(wstatus)), ")")
                      : absl::StrCat("exited with status ", WEXITSTATUS(wstatus));
    return outcome;
  }
  std::vector<std::string> parts = absl::StrSplit(report, absl::MaxSplits('\n', 3));
  CHECK_EQ(parts.size(), 4u) << report;
  int code = 0;
  CHECK(absl::SimpleAtoi(parts[0], &code));
  CHECK(absl::SimpleAtod(parts[1], &outcome.seconds));
  CHECK(absl::SimpleAtoi(parts[2], &outcome.rss_growth_kb));
  outcome.returned = true;
  outcome.how = "returned";
  outcome.code = static_cast<absl::StatusCode>(code);
  outcome.message = parts[3];
  return outcome;
}

}  // namespace fedtune::imaging::hostile
