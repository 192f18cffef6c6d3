#include "common/data/public_collections.h"

#include "absl/status/status.h"

namespace fedtune::data {

absl::StatusOr<PublicCollectionIndex> IndexPublicCollection(const PublicCollectionOptions&) {
  return absl::UnimplementedError("public-collection manifests are not implemented yet");
}

}  // namespace fedtune::data
