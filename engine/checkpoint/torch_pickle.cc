#include "engine/checkpoint/torch_pickle.h"

#include <cstring>
#include <deque>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mf {
namespace {

struct Value;
// Values live in the unpickler's arena and refer to each other by pointer: a pickle can
// make a container hold itself, which reference counting would leak.
using ValuePtr = Value*;

struct Value {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kBytes, kTuple, kList, kDict, kGlobal, kStorage, kTensor, kMark };
  Kind kind = Kind::kNone;
  int64_t integer = 0;
  std::string text;             // string, bytes, or a global's "module.name"
  std::vector<ValuePtr> items;  // tuple and list items; a dict's keys and values, alternating
  PickledTensor tensor;         // storage (dtype, key, elements) or tensor
};

const std::map<std::string, DType>& StorageTypes() {
  static const auto* types = new std::map<std::string, DType>{
      {"torch.FloatStorage", DType::kF32},   {"torch.HalfStorage", DType::kF16}, {"torch.BFloat16Storage", DType::kBF16},
      {"torch.DoubleStorage", DType::kF64},  {"torch.LongStorage", DType::kI64}, {"torch.IntStorage", DType::kI32},
      {"torch.ShortStorage", DType::kI16},   {"torch.CharStorage", DType::kI8},  {"torch.ByteStorage", DType::kU8},
      {"torch.BoolStorage", DType::kBool}};
  return *types;
}

constexpr const char* kOrderedDict = "collections.OrderedDict";
constexpr const char* kRebuildTensor = "torch._utils._rebuild_tensor_v2";
constexpr const char* kRebuildParameter = "torch._utils._rebuild_parameter";

bool AllowedGlobal(const std::string& name) {
  return name == kOrderedDict || name == kRebuildTensor || name == kRebuildParameter || StorageTypes().count(name) > 0;
}

class Unpickler {
 public:
  Unpickler(std::string_view data, const std::string& source) : data_(data), source_(source) {}

  absl::StatusOr<std::vector<PickledTensor>> Run();

 private:
  absl::Status Error(const std::string& problem) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", problem, " (at byte ", at_, ")"));
  }
  bool Take(size_t bytes, std::string_view* out) {
    if (data_.size() - at_ < bytes) return false;
    *out = data_.substr(at_, bytes);
    at_ += bytes;
    return true;
  }
  absl::StatusOr<uint64_t> ReadUnsigned(int bytes);
  absl::StatusOr<std::string> ReadLine();
  absl::StatusOr<ValuePtr> Pop();
  absl::StatusOr<std::vector<ValuePtr>> PopToMark();
  absl::Status Push(ValuePtr value);
  absl::Status Step(uint8_t opcode, bool* stop);
  absl::Status PushGlobal(const std::string& module, const std::string& name);
  absl::StatusOr<ValuePtr> Reduce(const Value& callable, const Value& arguments);
  absl::StatusOr<ValuePtr> PersistentLoad(const Value& id);
  absl::Status Memoize(uint64_t index);
  absl::StatusOr<std::vector<PickledTensor>> StateDict(const Value& result) const;

  std::string_view data_;
  const std::string& source_;
  size_t at_ = 0;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::map<uint64_t, ValuePtr> memo_;
  std::deque<Value> arena_;  // every value made; a deque keeps their addresses

  ValuePtr Make(Value::Kind kind) {
    arena_.emplace_back();
    arena_.back().kind = kind;
    return &arena_.back();
  }
};

absl::StatusOr<uint64_t> Unpickler::ReadUnsigned(int bytes) {
  std::string_view raw;
  if (!Take(static_cast<size_t>(bytes), &raw)) return Error("truncated pickle");
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= static_cast<uint64_t>(static_cast<uint8_t>(raw[static_cast<size_t>(i)])) << (8 * i);
  return value;
}

absl::StatusOr<std::string> Unpickler::ReadLine() {
  const size_t end = data_.find('\n', at_);
  if (end == std::string_view::npos || end - at_ > 256) return Error("truncated or overlong GLOBAL name");
  std::string line(data_.substr(at_, end - at_));
  at_ = end + 1;
  return line;
}

absl::StatusOr<ValuePtr> Unpickler::Pop() {
  if (stack_.empty() || (!marks_.empty() && stack_.size() == marks_.back())) return Error("pop from an empty stack");
  ValuePtr value = std::move(stack_.back());
  stack_.pop_back();
  return value;
}

absl::StatusOr<std::vector<ValuePtr>> Unpickler::PopToMark() {
  if (marks_.empty()) return Error("no MARK to pop to");
  std::vector<ValuePtr> items(stack_.begin() + static_cast<int64_t>(marks_.back()), stack_.end());
  stack_.resize(marks_.back());
  marks_.pop_back();
  return items;
}

absl::Status Unpickler::Push(ValuePtr value) {
  constexpr size_t kMaxStack = 1 << 20;
  if (stack_.size() >= kMaxStack) return Error("stack too deep");
  stack_.push_back(std::move(value));
  return absl::OkStatus();
}

absl::Status Unpickler::Memoize(uint64_t index) {
  constexpr size_t kMaxMemo = 1 << 24;
  if (stack_.empty()) return Error("memoize with an empty stack");
  if (memo_.size() >= kMaxMemo) return Error("memo too large");
  memo_[index] = stack_.back();
  return absl::OkStatus();
}

absl::Status Unpickler::PushGlobal(const std::string& module, const std::string& name) {
  const std::string full = absl::StrCat(module, ".", name);
  if (!AllowedGlobal(full)) {
    return Error(absl::StrCat("global '", full, "' is not allowed: a state dict needs only ", kOrderedDict, ", ",
                              kRebuildTensor, ", ", kRebuildParameter, " and torch storage types"));
  }
  ValuePtr global = Make(Value::Kind::kGlobal);
  (*global).text = full;
  return Push(global);
}

absl::StatusOr<ValuePtr> Unpickler::PersistentLoad(const Value& id) {
  // ('storage', <storage type>, key, location, number of elements)
  const auto& items = id.items;
  if (id.kind != Value::Kind::kTuple || items.size() != 5 || items[0]->kind != Value::Kind::kString ||
      items[0]->text != "storage" || items[1]->kind != Value::Kind::kGlobal || items[2]->kind != Value::Kind::kString ||
      items[4]->kind != Value::Kind::kInt || items[4]->integer < 0) {
    return Error("persistent id is not ('storage', type, key, location, size)");
  }
  auto type = StorageTypes().find(items[1]->text);
  if (type == StorageTypes().end()) return Error(absl::StrCat("'", items[1]->text, "' is not a storage type"));
  ValuePtr storage = Make(Value::Kind::kStorage);
  storage->tensor.dtype = type->second;
  storage->tensor.storage_key = items[2]->text;
  storage->tensor.storage_elements = items[4]->integer;
  return storage;
}

absl::StatusOr<std::vector<int64_t>> IntTuple(const Value& value) {
  if (value.kind != Value::Kind::kTuple) return absl::InvalidArgumentError("expected a tuple of integers");
  std::vector<int64_t> result;
  for (const ValuePtr& item : value.items) {
    if (item->kind != Value::Kind::kInt || item->integer < 0) {
      return absl::InvalidArgumentError("expected a tuple of non-negative integers");
    }
    result.push_back(item->integer);
  }
  return result;
}

absl::StatusOr<ValuePtr> Unpickler::Reduce(const Value& callable, const Value& arguments) {
  if (callable.kind != Value::Kind::kGlobal) return Error("REDUCE of something that is not an allowed global");
  if (arguments.kind != Value::Kind::kTuple) return Error(absl::StrCat("REDUCE of '", callable.text, "' without a tuple"));
  const std::vector<ValuePtr>& args = arguments.items;
  if (callable.text == kOrderedDict) {
    if (!args.empty()) return Error("OrderedDict called with arguments");
    return Make(Value::Kind::kDict);
  }
  if (callable.text == kRebuildParameter) {
    if (args.size() != 3 || args[0]->kind != Value::Kind::kTensor) return Error("bad _rebuild_parameter arguments");
    return args[0];
  }
  if (callable.text == kRebuildTensor) {
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    if ((args.size() != 6 && args.size() != 7) || args[0]->kind != Value::Kind::kStorage ||
        args[1]->kind != Value::Kind::kInt || args[1]->integer < 0) {
      return Error("bad _rebuild_tensor_v2 arguments");
    }
    ValuePtr tensor = Make(Value::Kind::kTensor);
    tensor->tensor = args[0]->tensor;
    tensor->tensor.offset = args[1]->integer;
    absl::StatusOr<std::vector<int64_t>> shape = IntTuple(*args[2]);
    absl::StatusOr<std::vector<int64_t>> stride = IntTuple(*args[3]);
    if (!shape.ok() || !stride.ok() || shape->size() != stride->size()) {
      return Error("tensor size and stride must be tuples of equal length");
    }
    tensor->tensor.shape = *std::move(shape);
    tensor->tensor.stride = *std::move(stride);
    return tensor;
  }
  return Error(absl::StrCat("REDUCE of '", callable.text, "' is not allowed"));
}

absl::Status Unpickler::Step(uint8_t opcode, bool* stop) {
  using Kind = Value::Kind;
  auto push_int = [&](int64_t value) {
    ValuePtr item = Make(Kind::kInt);
    (*item).integer = value;
    return Push(item);
  };
  auto push_text = [&](int length_bytes, Kind kind) -> absl::Status {
    absl::StatusOr<uint64_t> length = ReadUnsigned(length_bytes);
    if (!length.ok()) return length.status();
    std::string_view raw;
    if (*length > data_.size() || !Take(static_cast<size_t>(*length), &raw)) return Error("truncated string");
    ValuePtr item = Make(kind);
    (*item).text = std::string(raw);
    return Push(item);
  };
  auto tuple_of = [&](size_t count) -> absl::Status {
    if (stack_.size() < count + (marks_.empty() ? 0 : marks_.back())) return Error("tuple of missing items");
    ValuePtr tuple = Make(Kind::kTuple);
    tuple->items.assign(stack_.end() - static_cast<int64_t>(count), stack_.end());
    stack_.resize(stack_.size() - count);
    return Push(tuple);
  };
  switch (opcode) {
    case 0x80: return ReadUnsigned(1).status();  // PROTO
    case 0x95: return ReadUnsigned(8).status();  // FRAME
    case '.': *stop = true; return absl::OkStatus();
    case '(': marks_.push_back(stack_.size()); return absl::OkStatus();
    case ')': return Push(Make(Kind::kTuple));
    case 'N': return Push(Make(Kind::kNone));
    case 0x88: case 0x89: {
      ValuePtr item = Make(Kind::kBool);
      (*item).integer = opcode == 0x88;
      return Push(item);
    }
    case 'K': { auto v = ReadUnsigned(1); return v.ok() ? push_int(static_cast<int64_t>(*v)) : v.status(); }
    case 'M': { auto v = ReadUnsigned(2); return v.ok() ? push_int(static_cast<int64_t>(*v)) : v.status(); }
    case 'J': { auto v = ReadUnsigned(4); return v.ok() ? push_int(static_cast<int32_t>(*v)) : v.status(); }
    case 0x8a: {  // LONG1: a little-endian two's complement integer of up to 8 bytes
      absl::StatusOr<uint64_t> length = ReadUnsigned(1);
      if (!length.ok()) return length.status();
      if (*length > 8) return Error("integer wider than 64 bits");
      if (*length == 0) return push_int(0);
      absl::StatusOr<uint64_t> bits = ReadUnsigned(static_cast<int>(*length));
      if (!bits.ok()) return bits.status();
      const int shift = 64 - 8 * static_cast<int>(*length);
      return push_int(static_cast<int64_t>(*bits << shift) >> shift);
    }
    case 'G': {  // BINFLOAT, big-endian; kept only so hooks' metadata parses
      std::string_view raw;
      if (!Take(8, &raw)) return Error("truncated float");
      return Push(Make(Kind::kFloat));
    }
    case 'X': return push_text(4, Kind::kString);
    case 0x8c: return push_text(1, Kind::kString);
    case 0x8d: return push_text(8, Kind::kString);
    case 'T': return push_text(4, Kind::kString);
    case 'U': return push_text(1, Kind::kString);
    case 'B': return push_text(4, Kind::kBytes);
    case 'C': return push_text(1, Kind::kBytes);
    case 0x8e: return push_text(8, Kind::kBytes);
    case 't': {
      absl::StatusOr<std::vector<ValuePtr>> items = PopToMark();
      if (!items.ok()) return items.status();
      ValuePtr tuple = Make(Kind::kTuple);
      tuple->items = *std::move(items);
      return Push(tuple);
    }
    case 0x85: return tuple_of(1);
    case 0x86: return tuple_of(2);
    case 0x87: return tuple_of(3);
    case ']': return Push(Make(Kind::kList));
    case '}': return Push(Make(Kind::kDict));
    case 'l': case 'd': {  // LIST, DICT: from the items above the mark
      absl::StatusOr<std::vector<ValuePtr>> items = PopToMark();
      if (!items.ok()) return items.status();
      if (opcode == 'd' && items->size() % 2 != 0) return Error("DICT with an odd number of items");
      auto built = Make(Value::Kind::kNone);
      built->kind = opcode == 'l' ? Kind::kList : Kind::kDict;
      built->items = *std::move(items);
      return Push(built);
    }
    case 'a': case 'e': case 's': case 'u': {  // APPEND(S), SETITEM(S): into the container below
      std::vector<ValuePtr> items;
      if (opcode == 'e' || opcode == 'u') {
        absl::StatusOr<std::vector<ValuePtr>> popped = PopToMark();
        if (!popped.ok()) return popped.status();
        items = *std::move(popped);
      } else {
        for (int i = 0; i < (opcode == 's' ? 2 : 1); ++i) {
          absl::StatusOr<ValuePtr> item = Pop();
          if (!item.ok()) return item.status();
          items.insert(items.begin(), *std::move(item));
        }
      }
      const Kind wanted = opcode == 'a' || opcode == 'e' ? Kind::kList : Kind::kDict;
      if (stack_.empty() || stack_.back()->kind != wanted) return Error("APPEND or SETITEM on the wrong kind of object");
      if (wanted == Kind::kDict && items.size() % 2 != 0) return Error("SETITEMS with an odd number of items");
      // Containers are mutated in place: the memo may hold the same object.
      auto& container = (*stack_.back());
      container.items.insert(container.items.end(), items.begin(), items.end());
      return absl::OkStatus();
    }
    case 'q': { auto i = ReadUnsigned(1); return i.ok() ? Memoize(*i) : i.status(); }
    case 'r': { auto i = ReadUnsigned(4); return i.ok() ? Memoize(*i) : i.status(); }
    case 0x94: return Memoize(memo_.size());
    case 'h': case 'j': {
      absl::StatusOr<uint64_t> index = ReadUnsigned(opcode == 'h' ? 1 : 4);
      if (!index.ok()) return index.status();
      auto it = memo_.find(*index);
      if (it == memo_.end()) return Error(absl::StrCat("memo entry ", *index, " is not set"));
      return Push(it->second);
    }
    case 'c': {
      absl::StatusOr<std::string> module = ReadLine();
      if (!module.ok()) return module.status();
      absl::StatusOr<std::string> name = ReadLine();
      if (!name.ok()) return name.status();
      return PushGlobal(*module, *name);
    }
    case 0x93: {  // STACK_GLOBAL
      absl::StatusOr<ValuePtr> name = Pop();
      if (!name.ok()) return name.status();
      absl::StatusOr<ValuePtr> module = Pop();
      if (!module.ok()) return module.status();
      if ((*module)->kind != Kind::kString || (*name)->kind != Kind::kString) return Error("STACK_GLOBAL of non-strings");
      return PushGlobal((*module)->text, (*name)->text);
    }
    case 'Q': {
      absl::StatusOr<ValuePtr> id = Pop();
      if (!id.ok()) return id.status();
      absl::StatusOr<ValuePtr> storage = PersistentLoad(**id);
      return storage.ok() ? Push(*std::move(storage)) : storage.status();
    }
    case 'R': {
      absl::StatusOr<ValuePtr> arguments = Pop();
      if (!arguments.ok()) return arguments.status();
      absl::StatusOr<ValuePtr> callable = Pop();
      if (!callable.ok()) return callable.status();
      absl::StatusOr<ValuePtr> result = Reduce(**callable, **arguments);
      return result.ok() ? Push(*std::move(result)) : result.status();
    }
    case 'b': {  // BUILD: a state dict's `_metadata` attribute; nothing a conversion needs
      absl::StatusOr<ValuePtr> state = Pop();
      if (!state.ok()) return state.status();
      if (stack_.empty() || (stack_.back()->kind != Kind::kDict && stack_.back()->kind != Kind::kTensor)) {
        return Error("BUILD of something other than a dict or tensor");
      }
      return absl::OkStatus();
    }
    default:
      return Error(absl::StrCat("opcode 0x", absl::Hex(opcode), " is not allowed in a state dict"));
  }
}

absl::StatusOr<std::vector<PickledTensor>> Unpickler::StateDict(const Value& result) const {
  if (result.kind != Value::Kind::kDict) return Error("the pickle holds no dict of tensors");
  std::vector<PickledTensor> tensors;
  for (size_t i = 0; i + 1 < result.items.size(); i += 2) {
    const Value& key = *result.items[i];
    const Value& value = *result.items[i + 1];
    if (key.kind != Value::Kind::kString) return Error("a state dict key is not a string");
    if (value.kind != Value::Kind::kTensor) return Error(absl::StrCat("entry '", key.text, "' is not a tensor"));
    tensors.push_back(value.tensor);
    tensors.back().name = key.text;
  }
  return tensors;
}

absl::StatusOr<std::vector<PickledTensor>> Unpickler::Run() {
  bool stop = false;
  while (!stop) {
    if (at_ >= data_.size()) return Error("truncated pickle (no STOP)");
    const auto opcode = static_cast<uint8_t>(data_[at_++]);
    if (absl::Status status = Step(opcode, &stop); !status.ok()) return status;
  }
  if (stack_.size() != 1 || !marks_.empty()) return Error("pickle does not end with exactly one object");
  return StateDict(*stack_.back());
}

}  // namespace

absl::StatusOr<std::vector<PickledTensor>> ReadPickledStateDict(std::string_view pickle, const std::string& source) {
  return Unpickler(pickle, source).Run();
}

}  // namespace mf
