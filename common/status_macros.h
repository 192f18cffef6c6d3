// Status propagation macros. Debian's Abseil (20220623) ships absl::Status but not the macros, so fedtune keeps
// exactly one copy here. Use them in functions returning absl::Status or absl::StatusOr<T>.
#ifndef FEDTUNE_COMMON_STATUS_MACROS_H_
#define FEDTUNE_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FEDTUNE_STATUS_CONCAT_INNER_(a, b) a##b
#define FEDTUNE_STATUS_CONCAT_(a, b) FEDTUNE_STATUS_CONCAT_INNER_(a, b)

// RETURN_IF_ERROR(expr): evaluates expr (an absl::Status) once and returns it from the caller when not OK.
#define RETURN_IF_ERROR(expr)                          \
  do {                                                 \
    ::absl::Status fedtune_status_ = (expr);           \
    if (!fedtune_status_.ok()) return fedtune_status_; \
  } while (false)

// ASSIGN_OR_RETURN(lhs, expr): evaluates expr (an absl::StatusOr<T>) once; returns its status when not OK, else
// moves the value into lhs, which may be a declaration ("auto x") or an existing lvalue.
#define ASSIGN_OR_RETURN(lhs, expr) \
  FEDTUNE_ASSIGN_OR_RETURN_IMPL_(FEDTUNE_STATUS_CONCAT_(fedtune_statusor_, __LINE__), lhs, expr)

#define FEDTUNE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

#endif  // FEDTUNE_COMMON_STATUS_MACROS_H_
