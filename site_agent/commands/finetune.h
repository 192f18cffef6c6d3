// `fedtune-site finetune --config F.textproto`: local fine-tuning at one site, as in the study. Runs the fine-tuning
// pipeline (common/train/finetune_pipeline.h: split, trainer, fine-tuned checkpoint, split manifests) with the
// config's LibTorch thread count, and records the run and its per-epoch metrics in <out_dir>/site.db
// (site_database.h: finetune_runs, finetune_epochs).
#ifndef FEDTUNE_SITE_AGENT_COMMANDS_FINETUNE_H_
#define FEDTUNE_SITE_AGENT_COMMANDS_FINETUNE_H_

#include "common/cli/command.h"

namespace fedtune::agent {

// fedtune-site finetune --config F.textproto [--device D] [--max-epochs N]
cli::Command MakeFinetuneCommand();

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_COMMANDS_FINETUNE_H_
