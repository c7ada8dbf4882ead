#include "server/service.h"

#include <algorithm>

#include "server/generation_reactors.h"
#include "server/request_conversion.h"
#include "server/wire.h"

namespace mf::server {
namespace {

namespace pb = moduleformer::v1;

// A unary call answered at once: parse, `handle`, serialize, finish counted.
template <typename Request, typename Response, typename Handle>
grpc::ServerUnaryReactor* ServeUnary(grpc::CallbackServerContext* context, const absl::Status& authorized,
                                     const grpc::ByteBuffer& raw_request, grpc::ByteBuffer* raw_response,
                                     ServerMetrics* metrics, const char* rpc, Handle handle) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Request request;
  Response response;
  grpc::Status status = ToGrpcStatus(authorized.ok() ? ParseRequest(raw_request, &request) : authorized);
  if (status.ok()) status = handle(request, &response);
  if (status.ok()) *raw_response = Serialize(response);
  FinishCounted(reactor, metrics, rpc, status);
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* ModuleFormerService::Generate(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return StartGenerate(engine_, metrics_, request_log_, context, Authorize(context), *request, response);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* ModuleFormerService::Stream(grpc::CallbackServerContext* context,
                                                                        const grpc::ByteBuffer* request) {
  return StartStream(engine_, metrics_, request_log_, context, Authorize(context), *request);
}

grpc::ServerUnaryReactor* ModuleFormerService::Tokenize(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return ServeUnary<pb::TokenizeRequest, pb::TokenizeResponse>(
      context, Authorize(context), *request, response, metrics_, "Tokenize",
      [this](const pb::TokenizeRequest& parsed, pb::TokenizeResponse* out) { return TokenizeParsed(parsed, out); });
}

grpc::ServerUnaryReactor* ModuleFormerService::ModelInfo(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return ServeUnary<pb::ModelInfoRequest, pb::ModelInfoResponse>(
      context, Authorize(context), *request, response, metrics_, "ModelInfo",
      [this](const pb::ModelInfoRequest&, pb::ModelInfoResponse* out) { return ModelInfoParsed(out); });
}

grpc::ServerUnaryReactor* ModuleFormerService::GetLoad(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return ServeUnary<pb::LoadRequest, pb::LoadResponse>(
      context, Authorize(context), *request, response, metrics_, "GetLoad",
      [this](const pb::LoadRequest&, pb::LoadResponse* out) { return GetLoadParsed(out); });
}

grpc::ServerUnaryReactor* ModuleFormerService::ExpertStats(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return ServeUnary<pb::ExpertStatsRequest, pb::ExpertStatsResponse>(
      context, Authorize(context), *request, response, metrics_, "ExpertStats",
      [this](const pb::ExpertStatsRequest& parsed, pb::ExpertStatsResponse* out) {
        return ExpertStatsParsed(parsed, out);
      });
}

absl::Status ModuleFormerService::Authorize(const grpc::CallbackServerContext* context) const {
  if (api_keys_ == nullptr) return absl::OkStatus();
  const auto& metadata = context->client_metadata();
  const auto header = metadata.find("authorization");
  if (header != metadata.end() && api_keys_->Allows(std::string_view(header->second.data(), header->second.size()))) {
    return absl::OkStatus();
  }
  return absl::UnauthenticatedError("authorization: this server needs 'Bearer <api key>' in the call's metadata");
}

grpc::Status ModuleFormerService::TokenizeParsed(const pb::TokenizeRequest& request, pb::TokenizeResponse* response) {
  if (engine_.tokenizer() == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this model has no tokenizer");
  }
  const std::vector<int32_t> ids = engine_.tokenizer()->Encode(request.text(), {request.allow_special_tokens()});
  response->mutable_token_ids()->Add(ids.begin(), ids.end());
  return grpc::Status::OK;
}

grpc::Status ModuleFormerService::ModelInfoParsed(pb::ModelInfoResponse* response) {
  const ModelConfig& config = engine_.model_config();
  response->set_model_name(model_name_);
  response->set_backend(backend_name_);
  response->set_vocab_size(static_cast<uint32_t>(config.vocab_size));
  response->set_n_layer(static_cast<uint32_t>(config.n_layer));
  response->set_n_embd(static_cast<uint32_t>(config.n_embd));
  response->set_n_head(static_cast<uint32_t>(config.n_head));
  response->set_att_hidden(static_cast<uint32_t>(config.att_hidden));
  response->set_ffd_hidden(static_cast<uint32_t>(config.ffd_hidden));
  response->set_k_att(static_cast<uint32_t>(config.k_att));
  response->set_k_mlp(static_cast<uint32_t>(config.k_mlp));
  for (int layer = 0; layer < config.n_layer; ++layer) {
    pb::LayerExperts* experts = response->add_layers();
    experts->set_attention_experts(static_cast<uint32_t>(engine_.model().num_experts(layer, Mixture::kAttention)));
    experts->set_mlp_experts(static_cast<uint32_t>(engine_.model().num_experts(layer, Mixture::kMlp)));
  }
  response->set_eos_token_id(static_cast<uint32_t>(config.eos_token_id));
  response->set_has_tokenizer(engine_.tokenizer() != nullptr);
  response->set_max_context_tokens(static_cast<uint32_t>(engine_.max_sequence_tokens()));
  const BlockAllocator& allocator = engine_.model().kv_cache().allocator();
  response->set_kv_block_size(static_cast<uint32_t>(allocator.block_size()));
  response->set_kv_blocks(static_cast<uint32_t>(allocator.num_blocks()));
  response->set_max_batch_tokens(static_cast<uint32_t>(engine_.config().scheduler.max_batch_tokens));
  return grpc::Status::OK;
}

grpc::Status ModuleFormerService::GetLoadParsed(pb::LoadResponse* response) {
  const EngineStats stats = engine_.stats();
  response->set_running_requests(static_cast<uint32_t>(stats.running));
  response->set_waiting_requests(static_cast<uint32_t>(stats.waiting));
  response->set_kv_blocks_used(static_cast<uint32_t>(stats.kv_blocks_used));
  response->set_kv_blocks_total(static_cast<uint32_t>(stats.kv_blocks_total));
  response->set_prefix_cache_hit_tokens(static_cast<uint64_t>(stats.prefix_cache_hit_tokens));
  response->set_preemptions(static_cast<uint64_t>(stats.preemptions));
  response->set_steps(static_cast<uint64_t>(stats.steps));
  response->set_draining(stats.draining);
  response->set_paused_requests(static_cast<uint32_t>(stats.paused));
  return grpc::Status::OK;
}

grpc::Status ModuleFormerService::ExpertStatsParsed(const pb::ExpertStatsRequest& request,
                                                    pb::ExpertStatsResponse* response) {
  const ExpertStats::Window window = engine_.expert_stats().SinceReset(request.stats_tag(), request.reset());
  response->set_tokens(window.tokens);
  response->set_seconds_since_reset(absl::ToDoubleSeconds(window.since_reset));
  response->set_stats_tag(request.stats_tag());
  for (size_t layer = 0; layer < window.counts.size(); ++layer) {
    pb::LayerExpertStats* stats = response->add_layers();
    stats->set_layer(static_cast<uint32_t>(layer));
    pb::MixtureExpertStats* mixtures[2] = {stats->mutable_attention(), stats->mutable_mlp()};
    for (int mixture = 0; mixture < 2; ++mixture) {
      const std::vector<uint64_t>& counts = window.counts[layer][mixture];
      const uint64_t peak = counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
      for (uint64_t count : counts) {
        mixtures[mixture]->add_counts(count);
        mixtures[mixture]->add_frequency(peak > 0 ? static_cast<double>(count) / static_cast<double>(peak) : 0.0);
      }
    }
  }
  return grpc::Status::OK;
}

}  // namespace mf::server
