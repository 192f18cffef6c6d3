// Fuzz harness "upload": the coordinator's upload path below gRPC (coordinator/upload_receiver.h, the code behind
// SiteService::UploadUpdate: header checks, claims, offsets and resume, the digest check, decoding, the spool
// limits, supersession, acceptance) driven by a sequence decoded from the input, over a real RoundManager (SQLite
// in memory, a temporary state_dir, a model of four small tensors). Up to four streams are in progress at once,
// each handler on its own thread but run one message at a time, so that every input replays identically.
//
// Input: 4 bytes of limits, then operations (one byte each, then their arguments): start a stream (site, run,
// round, payload, sha256, total_bytes, offset, num_samples, first message), send messages on a stream (header,
// payload slices, raw bytes), end a stream (half-close or cancel), GetUploadOffset, advance the clock past
// deadlines (rounds close, fail, retry), abort / start a run, restart the RoundManager. Short inputs mean few
// operations; reads past the end give 0.
//
// Checked after every operation (abort() on failure, so libFuzzer reports it):
//  - per site, the spool files of the open attempt that are not accepted updates number at most
//    max_open_uploads_per_site and hold at most max_spool_bytes_per_site; all together at most
//    max_spool_bytes_per_round;
//  - every accepted update of the open attempt still has its spool file (a restart could not rebuild otherwise);
//  - no status message contains the state_dir (paths stay on the server);
//  - an upload answered "accepted" names a round in range and a payload the database holds as accepted;
//  - after the last operation a fresh RoundManager recovers from the same state.
#include <ATen/ATen.h>
#include <stdint.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/fl/codec.h"
#include "common/fl/model_tensors.h"
#include "common/fl/tensor_map.h"
#include "common/io/sha256.h"
#include "common/model/checkpoint.h"
#include "coordinator/blob_store.h"
#include "coordinator/round_manager.h"
#include "coordinator/state_store.h"
#include "coordinator/upload_receiver.h"

namespace fedtune::coordinator {
namespace {

namespace fs = std::filesystem;

#define FUZZ_CHECK(cond, ...)                                                                                \
  do {                                                                                                       \
    if (!(cond)) {                                                                                           \
      std::fprintf(stderr, "upload_fuzz: check failed: %s: %s\n", #cond, absl::StrCat(__VA_ARGS__).c_str()); \
      abort();                                                                                               \
    }                                                                                                        \
  } while (0)

// The input, read front to back; past its end every read gives 0 (or nothing).
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint64_t U64(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | Byte();
    return v;
  }
  std::string Bytes(size_t n) {
    n = std::min(n, size_ - std::min(pos_, size_));
    std::string out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// What every input shares: a folder, the model file and the payloads built from it.
struct World {
  std::string dir;
  std::string model_path;
  fl::TensorMap global;
  std::vector<std::string> payloads;  // Valid deltas, then one that misses a tensor.

  World() {
    std::error_code ec;
    fs::path base = fs::exists("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
    std::string templ = (base / "fedtune-upload-fuzz-XXXXXX").string();
    FUZZ_CHECK(mkdtemp(templ.data()) != nullptr, "mkdtemp ", templ);
    dir = templ;
    model::Checkpoint checkpoint;
    model::MemberWeights member;
    member.weights["fc.weight"] = at::zeros({4, 3});
    member.weights["fc.bias"] = at::zeros({4});
    member.weights["bn.running_mean"] = at::zeros({4});
    member.weights["bn.num_batches_tracked"] = at::zeros({}, at::kLong);
    checkpoint.members.push_back(member);
    model_path = dir + "/model.ckpt";
    absl::StatusOr<std::string> saved = model::SaveCheckpoint(&checkpoint, model_path);
    FUZZ_CHECK(saved.ok(), saved.status().ToString());
    global = fl::CheckpointTensors(checkpoint);
    for (int k = 0; k < 4; ++k) payloads.push_back(Encode(Delta(0.001 * (k + 1))));
    fl::TensorMap missing = Delta(0.01);
    missing.erase(missing.begin());
    payloads.push_back(Encode(missing));
  }
  ~World() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  fl::TensorMap Delta(double value) const {
    fl::TensorMap delta;
    for (const auto& [name, t] : global) delta[name] = fl::IsFloating(t) ? at::full_like(t, value) : at::zeros_like(t);
    return delta;
  }
  static std::string Encode(const fl::TensorMap& delta) {
    absl::StatusOr<fl::EncodedBundle> encoded = fl::EncodeTensors(delta);
    FUZZ_CHECK(encoded.ok(), encoded.status().ToString());
    return encoded->bundle.SerializeAsString();
  }
};

// One UploadUpdate stream: ReceiveUpload on a thread of its own, handed one message at a time. Every call returns
// once the handler waits for its next message or has finished, so that only one thread runs at any moment.
class Stream {
 public:
  Stream(RoundManager* rounds, std::string site, std::string payload, int64_t offset)
      : site_(std::move(site)), payload_(std::move(payload)), cursor_(offset) {
    thread_ = std::thread([this, rounds] { Run(rounds); });
  }
  ~Stream() {
    Close(/*cancel=*/true);
    thread_.join();
  }
  // Hands over `chunk` (ignored once the handler finished).
  void Send(v1::UploadChunk chunk) {
    absl::MutexLock lock(&mu_);
    if (done_ || closed_) return;
    mu_.Await(absl::Condition(this, &Stream::IdleLocked));
    if (done_) return;
    message_ = std::move(chunk);
    has_message_ = true;
    mu_.Await(absl::Condition(this, &Stream::IdleLocked));
  }
  // Ends the stream (half-close, or cancelled) and returns the handler's outcome.
  const UploadOutcome& Close(bool cancel) {
    absl::MutexLock lock(&mu_);
    if (!closed_) {
      mu_.Await(absl::Condition(this, &Stream::IdleLocked));
      closed_ = true;
      cancelled_ = cancel;
    }
    mu_.Await(absl::Condition(&done_));
    return outcome_;
  }
  const std::string& site() const { return site_; }
  const std::string& payload() const { return payload_; }
  int64_t& cursor() { return cursor_; }

 private:
  bool IdleLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ || (waiting_ && !has_message_); }
  bool ReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return has_message_ || closed_; }
  bool Read(v1::UploadChunk* chunk) {
    absl::MutexLock lock(&mu_);
    waiting_ = true;
    mu_.Await(absl::Condition(this, &Stream::ReadyLocked));
    waiting_ = false;
    if (!has_message_) return false;
    *chunk = std::move(message_);
    has_message_ = false;
    return true;
  }
  void Run(RoundManager* rounds) {
    UploadStream stream;
    stream.read = [this](v1::UploadChunk* chunk) { return Read(chunk); };
    stream.cancelled = [this] {
      absl::MutexLock lock(&mu_);
      return cancelled_;
    };
    UploadOutcome outcome = ReceiveUpload(rounds, site_, stream);
    absl::MutexLock lock(&mu_);
    outcome_ = std::move(outcome);
    done_ = true;
  }

  const std::string site_;
  const std::string payload_;
  int64_t cursor_;
  std::thread thread_;
  absl::Mutex mu_;
  bool waiting_ ABSL_GUARDED_BY(mu_) = false;
  bool has_message_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  v1::UploadChunk message_ ABSL_GUARDED_BY(mu_);
  UploadOutcome outcome_ ABSL_GUARDED_BY(mu_);
};

constexpr int kRounds = 2;
constexpr int kMaxOperations = 48;
constexpr size_t kMaxStreams = 4;
const char* const kSites[] = {"site-a", "site-b", "site-c"};  // site-c is approved but not selected.

class Case {
 public:
  Case(const World& world, Input input) : world_(world), in_(input), dir_(world.dir + "/case") {}

  void Run() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    fs::create_directories(dir_, ec);
    const int64_t size = static_cast<int64_t>(world_.payloads[0].size());
    options_.max_upload_bytes = size * (1 + in_.Byte() % 2);
    options_.max_open_uploads_per_site = 1 + in_.Byte() % 3;
    options_.max_spool_bytes_per_site = size * (1 + in_.Byte() % 4);
    options_.max_spool_bytes_per_round = size * (1 + in_.Byte() % 6);
    absl::StatusOr<std::unique_ptr<StateStore>> store = StateStore::Open(":memory:");
    FUZZ_CHECK(store.ok(), store.status().ToString());
    store_ = *std::move(store);
    absl::StatusOr<std::unique_ptr<BlobStore>> blobs = BlobStore::Open(dir_ + "/blobs");
    FUZZ_CHECK(blobs.ok(), blobs.status().ToString());
    blobs_ = *std::move(blobs);
    absl::StatusOr<std::string> digest = blobs_->Import(world_.model_path);
    FUZZ_CHECK(digest.ok(), digest.status().ToString());
    ModelVersion version;
    version.digest = *digest;
    version.path = blobs_->PathOf(*digest);
    FUZZ_CHECK(store_->PutModelVersion(version).ok(), "model version");
    for (const char* site : kSites)
      FUZZ_CHECK(store_->SetSiteStatus(site, federation::SiteStatus::kApproved, true, 0).ok(), site);
    OpenManager();
    StartRun();
    for (int op = 0; op < kMaxOperations && !in_.empty(); ++op) {
      Step();
      CheckSpool();
    }
    streams_.clear();  // Cancels what is still in progress.
    CheckSpool();
    manager_.reset();
    OpenManager();  // A restart recovers from whatever the input left.
    CheckSpool();
    manager_.reset();
    blobs_.reset();
    store_.reset();
    fs::remove_all(dir_, ec);
  }

 private:
  void OpenManager() {
    RoundManagerOptions options = options_;
    options.state_dir = dir_;
    options.clock = [this] { return absl::FromUnixMillis(now_ms_); };
    absl::StatusOr<std::unique_ptr<RoundManager>> manager = RoundManager::Create(store_.get(), blobs_.get(), options);
    FUZZ_CHECK(manager.ok(), "recovery failed: ", manager.status().ToString());
    manager_ = *std::move(manager);
  }

  void StartRun() {
    v1::RunConfig config;
    config.set_rounds(kRounds);
    config.set_min_sites(2);
    config.add_sites("site-a");
    config.add_sites("site-b");
    config.set_round_deadline_seconds(60);
    config.set_max_round_attempts(2);
    config.set_final_evaluation(in_.Byte() % 2 == 0);
    absl::StatusOr<std::string> run = manager_->StartRun(config);
    if (run.ok()) run_id_ = *run;
  }

  void CheckMessage(const absl::Status& status) {
    FUZZ_CHECK(!absl::StrContains(status.message(), world_.dir), "a server path reaches the site: ", status.ToString());
  }

  std::string PickPayload() {
    const uint8_t pick = in_.Byte() % 6;
    if (pick < 5) return world_.payloads[pick];
    return in_.Bytes(in_.Byte());
  }

  void StartStream() {
    if (streams_.size() >= kMaxStreams) return;
    const std::string site = kSites[in_.Byte() % 3];
    v1::UploadHeader header;
    const uint8_t run = in_.Byte() % 4;
    header.set_run_id(run < 2 ? run_id_ : run == 2 ? "run-9999" : "");
    const uint8_t round = in_.Byte() % 6;
    header.set_round(round < 2 ? round + 1 : round == 2 ? 0 : round == 3 ? -1 : static_cast<int32_t>(in_.U64(4)));
    const std::string payload = PickPayload();
    const uint8_t sha = in_.Byte() % 4;
    header.set_sha256(sha < 2    ? io::Sha256Hex(sha == 0 ? payload : world_.payloads[0])
                      : sha == 2 ? io::Sha256Hex(in_.Bytes(4))
                                 : "not-a-digest");
    const uint8_t total = in_.Byte() % 4;
    const int64_t n = static_cast<int64_t>(payload.size());
    header.set_total_bytes(total < 2 ? n + total : total == 2 ? static_cast<int64_t>(in_.U64(8)) : 0);
    const uint8_t offset = in_.Byte() % 4;
    header.set_offset(offset == 0   ? 0
                      : offset == 1 ? in_.Byte()
                      : offset == 2 ? static_cast<int64_t>(in_.U64(8))
                                    : n / 2);
    header.set_num_samples(in_.Byte() % 8 == 0 ? 0 : 10);
    if (in_.Byte() % 16 == 0) header.set_train_loss(std::numeric_limits<double>::quiet_NaN());
    auto stream = std::make_unique<Stream>(manager_.get(), site, payload, std::max<int64_t>(0, header.offset()));
    const uint8_t first = in_.Byte() % 8;
    if (first == 0) {
      v1::UploadChunk data;
      data.set_data(payload.substr(0, 16));
      stream->Send(data);
    } else if (first != 1) {  // 1: nothing, the stream just ends.
      v1::UploadChunk chunk;
      *chunk.mutable_header() = header;
      stream->Send(chunk);
    }
    streams_.push_back(std::move(stream));
  }

  void SendMessages() {
    if (streams_.empty()) return;
    Stream& stream = *streams_[in_.Byte() % streams_.size()];
    const int count = 1 + in_.Byte() % 4;
    for (int i = 0; i < count; ++i) {
      v1::UploadChunk chunk;
      const uint8_t kind = in_.Byte() % 8;
      if (kind == 0) {
        chunk.mutable_header()->set_run_id(run_id_);
      } else if (kind == 1) {
        chunk.set_data(in_.Bytes(in_.Byte()));
      } else {
        const int64_t at = std::min<int64_t>(stream.cursor(), static_cast<int64_t>(stream.payload().size()));
        const int64_t len = kind == 7 ? static_cast<int64_t>(stream.payload().size()) : (in_.Byte() + 1) * 8;
        chunk.set_data(stream.payload().substr(static_cast<size_t>(at), static_cast<size_t>(len)));
        stream.cursor() = at + static_cast<int64_t>(chunk.data().size());
      }
      stream.Send(std::move(chunk));
    }
  }

  void EndStream(bool cancel) {
    if (streams_.empty()) return;
    const size_t which = in_.Byte() % streams_.size();
    const UploadOutcome& outcome = streams_[which]->Close(cancel);
    CheckMessage(outcome.result.status());
    if (outcome.result.ok()) {
      const v1::UploadHeader& h = outcome.header;
      FUZZ_CHECK(outcome.result->status() == "accepted", outcome.result->status());
      FUZZ_CHECK(h.round() >= 1 && h.round() <= kRounds, "accepted an upload for round ", h.round());
      absl::StatusOr<std::vector<UpdateRecord>> mine = store_->ListUpdates(
          h.run_id(), h.round(), std::nullopt, streams_[which]->site(), federation::UploadStatus::kAccepted);
      FUZZ_CHECK(mine.ok(), mine.status().ToString());
      bool found = false;
      for (const UpdateRecord& u : *mine) found = found || u.sha256 == h.sha256();
      FUZZ_CHECK(found, "answered accepted, but no accepted update of ", h.sha256(), " round ", h.round());
    } else if (outcome.result.status().code() == absl::StatusCode::kResourceExhausted) {
      FUZZ_CHECK(absl::StrContains(outcome.result.status().message(), "max_"), outcome.result.status().ToString());
    }
    streams_.erase(streams_.begin() + static_cast<std::ptrdiff_t>(which));
  }

  void Step() {
    switch (in_.Byte() % 9) {
      case 0:
      case 1:
        StartStream();
        break;
      case 2:
      case 3:
        SendMessages();
        break;
      case 4:
        EndStream(/*cancel=*/false);
        break;
      case 5:
        EndStream(/*cancel=*/true);
        break;
      case 6: {
        const uint8_t round = in_.Byte() % 4;
        absl::StatusOr<UploadTarget> target = manager_->PrepareUpload(kSites[in_.Byte() % 3], run_id_,
                                                                      round < 2    ? round + 1
                                                                      : round == 2 ? -1
                                                                                   : 0,
                                                                      io::Sha256Hex(PickPayload()));
        CheckMessage(target.status());
        break;
      }
      case 7:
        now_ms_ += int64_t{in_.Byte()} * 1000;
        (void)manager_->Tick();  // A failed tick leaves the round open: nothing to check here.
        break;
      default: {
        const uint8_t what = in_.Byte() % 3;
        if (what == 0) {
          (void)manager_->AbortRun("", "fuzz");
        } else if (what == 1) {
          StartRun();
        } else {
          streams_.clear();
          manager_.reset();
          OpenManager();
        }
      }
    }
  }

  // The spool limits and the accepted updates' files, from the files on disk.
  void CheckSpool() {
    absl::StatusOr<std::optional<RunRecord>> run = store_->ActiveRun();
    FUZZ_CHECK(run.ok(), run.status().ToString());
    if (!*run || (*run)->state != federation::RunState::kRunning) return;
    absl::StatusOr<std::vector<RoundRecord>> rounds = store_->ListRounds((*run)->run_id);
    FUZZ_CHECK(rounds.ok(), rounds.status().ToString());
    const RoundRecord* open = nullptr;
    for (const RoundRecord& r : *rounds) open = r.state == federation::RoundState::kOpen ? &r : open;
    FUZZ_CHECK(open != nullptr, "run ", (*run)->run_id, " is running without an open round");
    absl::StatusOr<std::vector<UpdateRecord>> accepted =
        store_->ListUpdates(open->run_id, open->round, open->attempt, "", federation::UploadStatus::kAccepted);
    FUZZ_CHECK(accepted.ok(), accepted.status().ToString());
    std::set<std::string> accepted_files;
    std::set<std::string> accepted_sites;
    for (const UpdateRecord& u : *accepted) {
      FUZZ_CHECK(fs::exists(u.spool_path), "accepted update of ", u.site_id, " lost its spool file");
      FUZZ_CHECK(accepted_sites.insert(u.site_id).second, "two accepted updates of ", u.site_id);
      accepted_files.insert(fs::path(u.spool_path).filename().string());
    }
    const std::string prefix = absl::StrCat("r", open->round, "-a", open->attempt, "-");
    std::map<std::string, std::pair<int, int64_t>> per_site;  // Files, bytes.
    int64_t total = 0;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir_ + "/spool/" + open->run_id, ec)) {
      const std::string name = entry.path().filename().string();
      if (accepted_files.count(name) > 0 || !absl::StartsWith(name, prefix)) continue;
      const int64_t bytes = static_cast<int64_t>(fs::file_size(entry.path(), ec));
      std::string site;
      for (const char* s : kSites) {
        if (absl::StartsWith(name, absl::StrCat(prefix, s, "-"))) site = s;
      }
      FUZZ_CHECK(!site.empty(), "spool file of an unknown site: ", name);
      per_site[site].first += 1;
      per_site[site].second += bytes;
      total += bytes;
    }
    for (const auto& [site, use] : per_site) {
      FUZZ_CHECK(use.first <= options_.max_open_uploads_per_site, site, " holds ", use.first, " partial uploads");
      FUZZ_CHECK(use.second <= options_.max_spool_bytes_per_site, site, " holds ", use.second, " spool bytes");
    }
    FUZZ_CHECK(total <= options_.max_spool_bytes_per_round, "the round holds ", total, " spool bytes");
  }

  const World& world_;
  Input in_;
  const std::string dir_;
  RoundManagerOptions options_;
  int64_t now_ms_ = 1'700'000'000'000;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<RoundManager> manager_;
  std::string run_id_;
  std::vector<std::unique_ptr<Stream>> streams_;  // Declared last: destroyed (cancelled) before the manager.
};

}  // namespace
}  // namespace fedtune::coordinator

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return 0;  // Longer inputs add nothing but time (at most 48 operations).
  static const fedtune::coordinator::World* world = new fedtune::coordinator::World();
  fedtune::coordinator::Case(*world, fedtune::coordinator::Input(data, size)).Run();
  return 0;
}
