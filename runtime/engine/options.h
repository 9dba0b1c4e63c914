// What the engine derives from its options, one rule each: the longest sequence and prompt,
// the KV format defaults and the CPU pool size. Engine::Create, admission and the start-up
// memory estimate all read them from here. Internal to runtime/.
#pragma once

#include <cstdint>

#include "kvcache/format_catalogue.h"
#include "runtime/engine/engine.h"
#include "runtime/checkpoint/model_config.h"

namespace squat {

// The KV pool when kv_pool_bytes is 0 on CPU (on CUDA the engine sizes it from free memory).
inline constexpr int64_t kDefaultCpuKvPoolBytes = int64_t{1} << 30;

// Tokens a sequence may reach: max_model_len, capped by the model's max_position_embeddings.
int64_t MaxModelLen(const EngineOptions& options, const ModelConfig& config);
// The longest prompt: max_prompt_tokens (0: no own limit) below max_model_len.
int64_t MaxPromptTokens(const EngineOptions& options, int64_t max_model_len);
// The --kv-* options as the format catalogue's defaults.
kv::FormatDefaults FormatDefaultsOf(const EngineOptions& options);

}  // namespace squat
