#include "checkpoint/sharded_checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/safetensors.h"

namespace grove::ckpt {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string step_dir_name(int step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step_%08d", step);
  return buf;
}

std::string shard_file_name(int rank) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "shard-%05d.safetensors", rank);
  return buf;
}

// ---- boxes (an offset and a shape per dimension) ----------------------------------------------

struct Box {
  std::vector<int64_t> offset, shape;
};

bool intersect(const Box& a, const Box& b, Box* out) {
  out->offset.resize(a.offset.size());
  out->shape.resize(a.offset.size());
  for (size_t d = 0; d < a.offset.size(); ++d) {
    const int64_t lo = std::max(a.offset[d], b.offset[d]);
    const int64_t hi = std::min(a.offset[d] + a.shape[d], b.offset[d] + b.shape[d]);
    if (hi <= lo) return false;
    out->offset[d] = lo;
    out->shape[d] = hi - lo;
  }
  return true;
}

// Copies region `r` (global coordinates) from `src` (laid out as box `sb`) into `dst` (box `db`).
void copy_region(const char* src, const Box& sb, char* dst, const Box& db, const Box& r,
                 size_t elem) {
  const size_t nd = r.shape.size();
  if (nd == 0) {
    std::memcpy(dst, src, elem);
    return;
  }
  std::vector<int64_t> sstride(nd), dstride(nd);
  sstride[nd - 1] = dstride[nd - 1] = 1;
  for (size_t d = nd - 1; d > 0; --d) {
    sstride[d - 1] = sstride[d] * sb.shape[d];
    dstride[d - 1] = dstride[d] * db.shape[d];
  }
  const int64_t run = r.shape[nd - 1];  // contiguous elements along the last dimension
  std::vector<int64_t> idx(nd, 0);      // position inside r, last dimension fixed at 0
  while (true) {
    int64_t so = 0, dof = 0;
    for (size_t d = 0; d < nd; ++d) {
      so += (r.offset[d] + idx[d] - sb.offset[d]) * sstride[d];
      dof += (r.offset[d] + idx[d] - db.offset[d]) * dstride[d];
    }
    std::memcpy(dst + dof * elem, src + so * elem, run * elem);
    // Next index over all dimensions but the last.
    int d = static_cast<int>(nd) - 2;
    for (; d >= 0; --d) {
      if (++idx[d] < r.shape[d]) break;
      idx[d] = 0;
    }
    if (d < 0) break;
  }
}

Status make_index(const fs::path& dir, json* index) {
  json tensors = json::object();
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.starts_with("shard-") && n.ends_with(".safetensors")) files.push_back(n);
  }
  std::sort(files.begin(), files.end());
  for (const std::string& f : files) {
    auto hdr = ReadSafetensorsHeader((dir / f).string());
    if (!hdr.ok()) return hdr.status();
    const json& h = hdr.value().header;
    const json meta = h.value("__metadata__", json::object());
    for (auto it = h.begin(); it != h.end(); ++it) {
      if (it.key() == "__metadata__") continue;
      const std::string& name = it.key();
      const json& info = it.value();
      const json global = json::parse(meta.value("global_shape:" + name, "null"));
      const json offset = json::parse(meta.value("offset:" + name, "null"));
      if (!global.is_array() || !offset.is_array())
        return Status::Error(f + ": tensor '" + name + "' has no placement metadata");
      json& t = tensors[name];
      if (t.is_null())
        t = {{"global_shape", global}, {"dtype", info["dtype"]}, {"pieces", json::array()}};
      if (t["global_shape"] != global)
        return Status::Error(f + ": tensor '" + name + "' global shape " + global.dump() +
                             " disagrees with another shard's " + t["global_shape"].dump());
      const uint64_t begin = info["data_offsets"][0].get<uint64_t>() + hdr.value().data_start;
      const uint64_t end = info["data_offsets"][1].get<uint64_t>() + hdr.value().data_start;
      t["pieces"].push_back({{"file", f},
                             {"offset", offset},
                             {"shape", info["shape"]},
                             {"bytes", {begin, end}},
                             {"crc32", meta.value("crc32:" + name, "")}});
    }
  }
  // Every tensor must be covered exactly: the pieces' element counts add up to the whole.
  for (auto it = tensors.begin(); it != tensors.end(); ++it) {
    int64_t global = 1, covered = 0;
    for (int64_t d : it.value()["global_shape"]) global *= d;
    for (const json& p : it.value()["pieces"]) {
      int64_t n = 1;
      for (int64_t d : p["shape"]) n *= d;
      covered += n;
    }
    if (covered != global)
      return Status::Error("checkpoint pieces of '" + it.key() + "' cover " +
                           std::to_string(covered) + " of " + std::to_string(global) +
                           " elements (a rank's shard is missing or duplicated)");
  }
  *index = {{"format", "grove-dist-checkpoint-v1"}, {"files", files}, {"tensors", tensors}};
  return Status::Ok();
}

Status publish(const std::string& root, const fs::path& tmp, const fs::path& final_dir,
               const std::string& name, int keep) {
  std::error_code ec;
  if (fs::exists(final_dir)) fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir, ec);
  if (ec) return Status::Error("cannot rename " + tmp.string() + ": " + ec.message());
  GROVE_RETURN_IF_ERROR(FsyncDir(root));
  GROVE_RETURN_IF_ERROR(WriteFileAtomic((fs::path(root) / "latest").string(), name + "\n"));
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.starts_with("step_") && n.find(".tmp") == std::string::npos)
      steps.push_back(n);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + keep < steps.size(); ++i) fs::remove_all(fs::path(root) / steps[i], ec);
  return Status::Ok();
}

}  // namespace

StatusOr<std::string> Save(const std::string& root, int step, const std::vector<Piece>& pieces,
                           const json& state, int keep, const RankInfo& rank) {
  const std::string name = step_dir_name(step);
  const fs::path final_dir = fs::path(root) / name, tmp = fs::path(root) / (name + ".tmp");
  Status st;
  if (rank.leader) {
    std::error_code ec;
    fs::create_directories(root, ec);
    if (!ec) fs::remove_all(tmp, ec);
    if (!ec) fs::create_directories(tmp, ec);
    if (ec) st = Status::Error("cannot create " + tmp.string() + ": " + ec.message());
  }
  GROVE_RETURN_IF_ERROR(rank.agree(st));

  std::vector<NamedTensor> mine;
  std::map<std::string, std::string> meta = {{"format", "grove-dist-checkpoint-v1"}};
  for (const Piece& p : pieces) {
    if (!p.write) continue;
    mine.push_back({p.name, p.local});
    meta["global_shape:" + p.name] = json(p.global_shape).dump();
    meta["offset:" + p.name] = json(p.offset).dump();
  }
  // A save that fails after NAME.tmp/ exists removes it (once every rank is past writing), so a
  // full disk does not stay full with a partial checkpoint; the previous checkpoints stay.
  auto discard_tmp = [&](Status failed) {
    if (rank.leader) {
      std::error_code ec;
      fs::remove_all(tmp, ec);
      if (ec)
        return Status::Error(failed.message() + " (and the partial " + tmp.string() +
                             " could not be removed: " + ec.message() + ")");
    }
    return failed;
  };
  st = mine.empty() ? Status::Ok()
                    : WriteSafetensors((tmp / shard_file_name(rank.rank)).string(), mine, meta);
  st = rank.agree(st);
  if (!st.ok()) return discard_tmp(st);

  if (rank.leader) {
    json index;
    st = make_index(tmp, &index);
    if (st.ok()) {
      json s = state;
      s["step"] = step;
      st = WriteFileAtomic((tmp / "index.json").string(), index.dump(1));
      if (st.ok()) st = WriteFileAtomic((tmp / "state.json").string(), s.dump(2));
      if (st.ok()) st = FsyncDir(tmp.string());
      if (st.ok()) st = publish(root, tmp, final_dir, name, keep);
    }
  }
  st = rank.agree(st);
  if (!st.ok()) return discard_tmp(st);
  return final_dir.string();
}

std::string Latest(const std::string& root) {
  std::ifstream in(fs::path(root) / "latest");
  std::string name;
  if (!(in >> name)) return "";
  const fs::path dir = fs::path(root) / name;
  return fs::exists(dir / "index.json") && fs::exists(dir / "state.json") ? dir.string() : "";
}

Status Verify(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Status::Error("checkpoint " + dir + " does not exist");
  auto index = ReadIndex(dir);
  if (!index.ok()) return index.status();
  const fs::path state_path = fs::path(dir) / "state.json";
  std::ifstream sin(state_path);
  if (!sin) return Status::Error(state_path.string() + " is missing");
  const json state = json::parse(sin, nullptr, /*allow_exceptions=*/false);
  if (state.is_discarded() || !state.is_object() || !state.contains("step"))
    return Status::Error(state_path.string() + " is corrupt (no step)");
  // The byte length each shard file needs for the pieces the index places in it.
  std::map<std::string, uint64_t> needed;
  try {
    for (const auto& f : index.value().value("files", json::array()))
      needed[f.get<std::string>()] = 0;
    for (const auto& [name, t] : index.value()["tensors"].items())
      for (const json& p : t.at("pieces")) {
        uint64_t& n = needed[p.at("file").get<std::string>()];
        n = std::max(n, p.at("bytes").at(1).get<uint64_t>());
      }
  } catch (const json::exception& e) {
    return Status::Error((fs::path(dir) / "index.json").string() + " is corrupt (" + e.what() +
                         ")");
  }
  for (const auto& [file, bytes] : needed) {
    const fs::path p = fs::path(dir) / file;
    const uintmax_t size = fs::file_size(p, ec);
    if (ec) return Status::Error(p.string() + " is missing (named in index.json)");
    if (size < bytes)
      return Status::Error(p.string() + ": truncated: " + std::to_string(size) +
                           " bytes, index.json places data up to byte " + std::to_string(bytes));
  }
  return Status::Ok();
}

std::vector<std::string> List(const std::string& root) {
  std::vector<std::string> dirs;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (n.starts_with("step_") && !n.ends_with(".tmp") && e.is_directory(ec))
      dirs.push_back(e.path().string());
  }
  std::sort(dirs.rbegin(), dirs.rend());
  return dirs;
}

StatusOr<json> ReadIndex(const std::string& dir) {
  const fs::path p = fs::path(dir) / "index.json";
  std::ifstream in(p);
  if (!in) return Status::Error("checkpoint " + dir + " has no readable index.json");
  json index = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.contains("tensors"))
    return Status::Error(p.string() + " is corrupt (no tensors)");
  return index;
}

namespace {

// Reads (and CRC-checks) one stored piece; cached per load.
StatusOr<Tensor> read_piece(const fs::path& dir, const std::string& name, const json& piece,
                            DType dtype, std::map<std::string, Tensor>* cache) {
  const std::string file = piece["file"].get<std::string>();
  const std::string key = file + "\n" + name;
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  const fs::path path = dir / file;
  Tensor t = Tensor::empty(piece["shape"].get<Shape>(), dtype);
  const uint64_t begin = piece["bytes"][0].get<uint64_t>(), end = piece["bytes"][1].get<uint64_t>();
  if (end - begin != t.bytes())
    return Status::Error(path.string() + ": tensor '" + name + "' size does not match its shape");
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Error("cannot open " + path.string() + " (tensor '" + name + "')");
  in.seekg(0, std::ios::end);
  if (static_cast<uint64_t>(in.tellg()) < end)
    return Status::Error(path.string() + ": truncated: tensor '" + name + "' ends at byte " +
                         std::to_string(end) + " but the file is shorter");
  in.seekg(static_cast<std::streamoff>(begin));
  in.read(static_cast<char*>(t.raw()), static_cast<std::streamsize>(t.bytes()));
  if (!in) return Status::Error(path.string() + ": read error in tensor '" + name + "'");
  char crc[16];
  std::snprintf(crc, sizeof(crc), "%08x", crc32(t.raw(), t.bytes()));
  if (piece.value("crc32", "") != crc)
    return Status::Error(path.string() + ": checksum mismatch in tensor '" + name +
                         "' (file is corrupt; use an earlier checkpoint)");
  (*cache)[key] = t;
  return t;
}

StatusOr<json> load_local(const std::string& dir, std::vector<Piece>& pieces,
                          std::vector<Tensor>* staged) {
  auto index = ReadIndex(dir);
  if (!index.ok()) return index.status();
  std::ifstream sin(fs::path(dir) / "state.json");
  json state = sin ? json::parse(sin, nullptr, false) : json();
  if (state.is_discarded() || !state.is_object() || !state.contains("step"))
    return Status::Error(dir + "/state.json is corrupt or missing (no step)");
  const json& tensors = index.value()["tensors"];
  std::map<std::string, Tensor> cache;
  for (const Piece& p : pieces) {
    if (!tensors.contains(p.name))
      return Status::Error("checkpoint " + dir + " has no tensor '" + p.name + "'");
    const json& t = tensors[p.name];
    if (t["global_shape"].get<Shape>() != p.global_shape)
      return Status::Error("checkpoint tensor '" + p.name + "' has global shape " +
                           t["global_shape"].dump() + ", this model expects " +
                           shape_str(p.global_shape) +
                           " (was it written with another model config?)");
    Tensor out = Tensor::empty(p.local.shape(), p.local.dtype());
    const Box want{p.offset, p.local.shape()};
    int64_t copied = 0;
    for (const json& sp : t["pieces"]) {
      const Box have{sp["offset"].get<std::vector<int64_t>>(), sp["shape"].get<Shape>()};
      Box r;
      if (!intersect(want, have, &r)) continue;
      auto data = read_piece(fs::path(dir), p.name, sp, p.local.dtype(), &cache);
      if (!data.ok()) return data.status();
      copy_region(static_cast<const char*>(data.value().raw()), have, static_cast<char*>(out.raw()),
                  want, r, dtype_size(p.local.dtype()));
      copied += shape_numel(r.shape);
    }
    if (copied != out.numel())
      return Status::Error("checkpoint " + dir + " does not cover tensor '" + p.name +
                           "' at offset " + json(p.offset).dump() + " shape " +
                           shape_str(p.local.shape()));
    staged->push_back(out);
  }
  return state;
}

}  // namespace

StatusOr<json> Load(const std::string& dir, std::vector<Piece>& pieces, const RankInfo& rank) {
  std::vector<Tensor> staged;
  auto state = fs::exists(dir)
                   ? load_local(dir, pieces, &staged)
                   : StatusOr<json>(Status::Error("checkpoint " + dir + " does not exist"));
  GROVE_RETURN_IF_ERROR(rank.agree(state.ok() ? Status::Ok() : state.status()));
  for (size_t i = 0; i < pieces.size(); ++i)
    std::memcpy(pieces[i].local.raw(), staged[i].raw(), staged[i].bytes());
  return state;
}

StatusOr<std::string> Inspect(const std::string& dir) {
  auto index = ReadIndex(dir);
  if (!index.ok()) return index.status();
  std::ifstream sin(fs::path(dir) / "state.json");
  json state = sin ? json::parse(sin, nullptr, false) : json::object();
  if (state.is_discarded()) state = json::object();
  std::ostringstream os;
  os << "checkpoint " << dir << "\n";
  os << "step " << state.value("step", -1);
  if (state.contains("loss")) os << ", loss " << state["loss"].dump();
  if (state.contains("layout")) os << ", written at " << state["layout"].dump();
  os << ", " << index.value()["files"].size() << " shard file(s)\n\n";
  char line[256];
  std::snprintf(line, sizeof(line), "%-36s %-6s %-20s %s\n", "tensor", "dtype", "global shape",
                "pieces (offset)");
  os << line;
  for (auto it = index.value()["tensors"].begin(); it != index.value()["tensors"].end(); ++it) {
    std::string pieces;
    for (const json& p : it.value()["pieces"]) {
      if (!pieces.empty()) pieces.push_back(' ');
      pieces.append(p["offset"].dump());
    }
    std::snprintf(line, sizeof(line), "%-36s %-6s %-20s %zu %s\n", it.key().c_str(),
                  it.value()["dtype"].get<std::string>().c_str(),
                  shape_str(it.value()["global_shape"].get<Shape>()).c_str(),
                  it.value()["pieces"].size(), pieces.substr(0, 120).c_str());
    os << line;
  }
  return os.str();
}

}  // namespace grove::ckpt
