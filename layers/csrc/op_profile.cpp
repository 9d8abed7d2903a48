// libtorch's operator profiler (`torch::autograd::profiler::RecordProfile`, the legacy
// CPU profiler), which tch does not expose. While a guard is alive every ATen operator
// called on its thread is recorded with its start and duration; deleting the guard
// writes them as a Chrome trace (`chrome://tracing`, Perfetto). Host and plugins share
// one libtorch, so the operators the plugins call are recorded too.
#include <torch/csrc/autograd/profiler_legacy.h>

#include <exception>
#include <string>

#define TERRAHOST_API extern "C" __attribute__((visibility("hidden")))

namespace {
thread_local std::string profile_error;
}

TERRAHOST_API const char* terrahost_op_profile_error() { return profile_error.c_str(); }

// A new guard writing to `path`, or null with the reason in terrahost_op_profile_error.
TERRAHOST_API void* terrahost_op_profile_start(const char* path) {
  try {
    return new torch::autograd::profiler::RecordProfile(std::string(path));
  } catch (const std::exception& e) {
    profile_error = e.what();
  } catch (...) {
    profile_error = "unknown C++ exception";
  }
  return nullptr;
}

// Stops recording and writes the trace. False with the reason when writing failed.
TERRAHOST_API bool terrahost_op_profile_stop(void* guard) {
  try {
    delete static_cast<torch::autograd::profiler::RecordProfile*>(guard);
    return true;
  } catch (const std::exception& e) {
    profile_error = e.what();
  } catch (...) {
    profile_error = "unknown C++ exception";
  }
  return false;
}
