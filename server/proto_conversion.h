// Translation between the public proto API (squat.v1) and the runtime's plain structs.
#pragma once

#include <string>

#include "runtime/engine/engine.h"
#include "squat/v1/generation.pb.h"

namespace squat::server {

// Proto optional fields fall back to the documented defaults (temperature, top_p and
// repetition_penalty 1.0); max_tokens 0 stays 0 (the engine's default_max_tokens applies). No
// validation here: the engine validates what it is given.
GenerateRequest ToEngineRequest(const v1::GenerateRequest& request, const std::string& request_id);

v1::FinishReason ToProtoFinishReason(FinishReason reason);
void FillUsage(const GenerationEvent& final_event, v1::Usage* usage);
void FillTimings(const Timings& timings, v1::Timings* proto);
void FillModelInfo(const ModelDescription& description, const KvPoolUsage& pool, v1::ModelInfo* info);

}  // namespace squat::server
