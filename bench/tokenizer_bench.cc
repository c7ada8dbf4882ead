// Tokenizer throughput on ~8 MB of English text, one thread.
// Corpus: $MF_BENCH_CORPUS if set, else the machine's license texts and package
// copyright files (plain English prose, several MB on any Debian system), cut to 8 MB.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/text/detokenizer.h"
#include "engine/text/tokenizer.h"

namespace {

namespace fs = std::filesystem;
constexpr size_t kCorpusBytes = 8 << 20;

std::string ReadAll(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

std::string BuildCorpus() {
  if (const char* path = std::getenv("MF_BENCH_CORPUS")) return ReadAll(path);
  std::vector<fs::path> files;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator("/usr/share/common-licenses", error)) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  std::vector<fs::path> copyrights;
  for (const auto& entry : fs::directory_iterator("/usr/share/doc", error)) {
    if (fs::is_regular_file(entry.path() / "copyright")) copyrights.push_back(entry.path() / "copyright");
  }
  std::sort(copyrights.begin(), copyrights.end());
  files.insert(files.end(), copyrights.begin(), copyrights.end());
  std::string corpus;
  while (corpus.size() < kCorpusBytes && !files.empty()) {
    for (const fs::path& file : files) {
      if (fs::is_regular_file(file)) corpus += ReadAll(file);
      if (corpus.size() >= kCorpusBytes) break;
    }
  }
  corpus.resize(std::min(corpus.size(), kCorpusBytes));
  return corpus;
}

const std::string& Corpus() {
  static const std::string corpus = BuildCorpus();
  return corpus;
}

const mf::Tokenizer& Gpt2() {
  static const mf::Tokenizer* tokenizer = [] {
    const char* dir = std::getenv("MF_TOKENIZER_DIR");
    auto loaded = mf::Tokenizer::Load(dir ? dir : MF_FIXTURES_DIR "/tokenizer/gpt2");
    if (!loaded.ok()) {
      std::fprintf(stderr, "%s\n", std::string(loaded.status().message()).c_str());
      std::exit(1);
    }
    return loaded->release();
  }();
  return *tokenizer;
}

void BM_EncodeCorpus(benchmark::State& state) {
  const std::string& corpus = Corpus();
  size_t tokens = 0;
  for (auto _ : state) {
    std::vector<int32_t> ids = Gpt2().Encode(corpus);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * corpus.size()));
  state.counters["corpus_MB"] = static_cast<double>(corpus.size()) / 1e6;
  state.counters["tokens"] = static_cast<double>(tokens);
}
BENCHMARK(BM_EncodeCorpus)->Unit(benchmark::kMillisecond)->MinTime(2.0);

// Prompt-sized requests: each call starts with a cold piece cache.
void BM_EncodePrompts(benchmark::State& state) {
  const std::string& corpus = Corpus();
  const size_t prompt_bytes = static_cast<size_t>(state.range(0));
  size_t offset = 0;
  for (auto _ : state) {
    if (offset + prompt_bytes > corpus.size()) offset = 0;
    std::vector<int32_t> ids = Gpt2().Encode(std::string_view(corpus).substr(offset, prompt_bytes));
    benchmark::DoNotOptimize(ids.data());
    offset += prompt_bytes;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * prompt_bytes));
}
BENCHMARK(BM_EncodePrompts)->Arg(256)->Arg(4096);

void BM_StreamingDecode(benchmark::State& state) {
  const std::vector<int32_t> ids = Gpt2().Encode(std::string_view(Corpus()).substr(0, 1 << 20));
  for (auto _ : state) {
    mf::IncrementalDecoder decoder(Gpt2(), false);
    size_t bytes = 0;
    for (int32_t id : ids) bytes += decoder.Push(id)->size();
    benchmark::DoNotOptimize(bytes);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * ids.size()));
}
BENCHMARK(BM_StreamingDecode)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
