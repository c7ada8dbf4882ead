#include "server/metrics_http.h"

#include <deque>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/text_serializer.h"

namespace mf::server {
namespace {

// Connections served by a fixed set of threads (normal stacks). At most `capacity`
// accepted connections wait for a thread; past that, enqueue blocks the accept loop,
// so further clients wait in the kernel's backlog instead of holding descriptors here.
class BoundedThreadPool : public httplib::TaskQueue {
 public:
  BoundedThreadPool(int threads, size_t capacity) : capacity_(capacity) {
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { Work(); });
  }
  ~BoundedThreadPool() override { shutdown(); }

  void enqueue(std::function<void()> task) override {
    absl::MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(this, &BoundedThreadPool::HasRoom));
    pending_.push_back(std::move(task));
  }

  void shutdown() override {
    {
      absl::MutexLock lock(&mutex_);
      stopping_ = true;
    }
    for (std::thread& worker : workers_) {
      if (worker.joinable()) worker.join();
    }
  }

 private:
  bool HasRoom() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_ || pending_.size() < capacity_; }
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_ || !pending_.empty(); }

  void Work() {
    while (true) {
      std::function<void()> task;
      {
        absl::MutexLock lock(&mutex_);
        mutex_.Await(absl::Condition(this, &BoundedThreadPool::HasWork));
        if (pending_.empty()) return;  // stopping, nothing left to serve
        task = std::move(pending_.front());
        pending_.pop_front();
      }
      task();  // serves one connection, then closes it
    }
  }

  const size_t capacity_;
  absl::Mutex mutex_;
  std::deque<std::function<void()>> pending_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace

MetricsHttpServer::MetricsHttpServer(std::vector<std::weak_ptr<prometheus::Collectable>> collectables,
                                     MetricsHttpOptions options)
    : collectables_(std::move(collectables)), options_(options) {
  httplib::Server& http = endpoint_.http();
  http.new_task_queue = [threads = options_.max_connections] {
    return new BoundedThreadPool(threads, static_cast<size_t>(threads));
  };
  http.set_keep_alive_timeout(options_.idle_timeout_seconds);
  http.set_read_timeout(options_.read_timeout_seconds, 0);
  http.set_write_timeout(options_.read_timeout_seconds, 0);
  http.set_payload_max_length(64 << 10);
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& response) {
    response.set_content(Exposition(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http.Get("/health", [](const httplib::Request&, httplib::Response& response) {
    response.set_content("ok\n", "text/plain; charset=utf-8");
  });
  http.set_error_handler([](const httplib::Request&, httplib::Response& response) {
    if (response.status == 404) response.set_content("not found: try /metrics\n", "text/plain; charset=utf-8");
  });
}

absl::Status MetricsHttpServer::Start(const std::string& host, int port) {
  return endpoint_.Start(host, port, "metrics");
}

std::string MetricsHttpServer::Exposition() const {
  std::vector<prometheus::MetricFamily> families;
  for (const std::weak_ptr<prometheus::Collectable>& weak : collectables_) {
    if (std::shared_ptr<prometheus::Collectable> collectable = weak.lock()) {
      std::vector<prometheus::MetricFamily> collected = collectable->Collect();
      families.insert(families.end(), std::make_move_iterator(collected.begin()),
                      std::make_move_iterator(collected.end()));
    }
  }
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace mf::server
