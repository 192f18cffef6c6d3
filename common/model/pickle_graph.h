// Helpers on graphs of PickleValue shared by the torch.save reader (pickle_reader.cc) and writer
// (torch_archive.cc). Internal: users include torch_archive.h.
//
// Thread safety: all functions are reentrant.
#ifndef FEDTUNE_COMMON_MODEL_PICKLE_GRAPH_H_
#define FEDTUNE_COMMON_MODEL_PICKLE_GRAPH_H_

#include <vector>

#include "absl/status/status.h"
#include "common/model/torch_archive.h"

namespace fedtune::model::internal {

// A new value of kind `kind`, every other field at its default.
PickleValuePtr MakePickleValue(PickleValue::Kind kind);

// Whether `v` is a container (tuple, list or dict).
bool IsPickleContainer(const PickleValue& v);

// One linear pass over `containers`, every container of a graph (the unpickler registers each one it makes): refuses
// reference cycles (which reference counting would never free), nesting deeper than kMaxPickleDepth, and graphs
// whose expansion as a tree (what a recursive consumer visits) exceeds kMaxPickleExpandedValues. InvalidArgument
// naming the bound, without a file name (the caller prefixes one). Never recurses.
absl::Status CheckPickleGraph(const std::vector<PickleValuePtr>& containers);

}  // namespace fedtune::model::internal

#endif  // FEDTUNE_COMMON_MODEL_PICKLE_GRAPH_H_
