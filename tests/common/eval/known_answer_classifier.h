// A test-only classifier whose Grad-CAM is known in closed form (for tests of common/eval).
#ifndef FEDTUNE_TESTS_COMMON_EVAL_KNOWN_ANSWER_CLASSIFIER_H_
#define FEDTUNE_TESTS_COMMON_EVAL_KNOWN_ANSWER_CLASSIFIER_H_

#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/model/classifier.h"

namespace fedtune::testing {

// A classifier whose Grad-CAM is known in closed form. Features(x) = [ReLU(x), ReLU(-x)] (two channels of the
// image's own size: "bright" and "dark" evidence) and Head is a bias-free Linear with the given weights, so for
// label k the logit is sum_c w_kc mean(A_c), every gradient d y_k / d A_c(i, j) is w_kc / (H W), and
//   cam_k = ReLU(sum_c w_kc A_c) / (H W).
// With pool_factor > 1 the features are average-pooled first (a coarser map, as in real networks).
class KnownAnswerClassifier : public model::ClassifierImpl {
 public:
  explicit KnownAnswerClassifier(std::vector<std::vector<float>> head_weights, int pool_factor = 1)
      : ClassifierImpl(Config(static_cast<int>(head_weights.size()))), pool_factor_(pool_factor) {
    const int64_t outputs = static_cast<int64_t>(head_weights.size());
    fc_ = register_module("fc", torch::nn::Linear(torch::nn::LinearOptions(2, outputs).bias(false)));
    torch::NoGradGuard no_grad;
    for (int64_t k = 0; k < outputs; ++k) {
      for (int64_t c = 0; c < 2; ++c) fc_->weight[k][c] = head_weights[k][c];
    }
  }
  torch::Tensor Features(const torch::Tensor& x) override {
    torch::Tensor f = torch::cat({torch::relu(x), torch::relu(-x)}, 1);
    return pool_factor_ > 1 ? torch::avg_pool2d(f, pool_factor_) : f;
  }
  torch::Tensor Head(const torch::Tensor& pooled) override { return fc_->forward(pooled); }
  int64_t num_features() const override { return 2; }
  std::string stem_weight_key() const override { return "none"; }
  std::string head_prefix() const override { return "fc."; }

 private:
  static model::ModelConfig Config(int outputs) {
    model::ModelConfig config;
    config.num_outputs = outputs;
    return config;
  }
  int pool_factor_;
  torch::nn::Linear fc_{nullptr};
};

}  // namespace fedtune::testing

#endif  // FEDTUNE_TESTS_COMMON_EVAL_KNOWN_ANSWER_CLASSIFIER_H_
