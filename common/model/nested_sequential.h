// A torch::nn::Sequential that can itself be stored in a Sequential (LibTorch's own cannot: its forward() is a
// template). Used wherever torchvision nests nn.Sequential, so that child names ("0", "1", ...) and therefore
// state-dict keys match.
#ifndef FEDTUNE_COMMON_MODEL_NESTED_SEQUENTIAL_H_
#define FEDTUNE_COMMON_MODEL_NESTED_SEQUENTIAL_H_

#include <torch/nn/modules/container/sequential.h>

namespace fedtune::model {

class NestedSequentialImpl : public torch::nn::SequentialImpl {
 public:
  using SequentialImpl::SequentialImpl;
  torch::Tensor forward(torch::Tensor x) { return SequentialImpl::forward(std::move(x)); }
};
TORCH_MODULE(NestedSequential);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_NESTED_SEQUENTIAL_H_
