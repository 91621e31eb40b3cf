-- Runs differential cases through the Lua reference interpreter (genlayerlabs/llm-policy).
--
--   lua5.4 reference_driver.lua REFERENCE_DIR CASES.json OUT.jsonl
--
-- REFERENCE_DIR is a checkout of the reference; nothing of it is in this repository. For each
-- case it writes one JSON line: the refusal, or the sort, encoding, fingerprint and what the term
-- does (a Pred's verdicts, a Policy's plan, transform and classifications, an Xform's requests,
-- a FailPlan's classifications). Numbers are written as "i:<integer>" or "f:<%.17g>" so that
-- integers and doubles stay apart; an empty table is written [].
local REF = assert(arg[1], "usage: lua5.4 reference_driver.lua REFERENCE_DIR CASES.json OUT.jsonl")
package.path = REF .. "/?.lua;" .. REF .. "/tests/unit/?.lua;" .. package.path
local ir = require("llm_policy.ir")
local json = require("_json")
local sequence = require("llm_policy.sequence")
local T = ir.term

local function enc(v)
  local t = type(v)
  if t == "nil" then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if math.type(v) == "integer" then return '"i:' .. string.format("%d", v) .. '"' end
    if v ~= v then return '"f:nan"' end
    if v == math.huge then return '"f:inf"' end
    if v == -math.huge then return '"f:-inf"' end
    return '"f:' .. string.format("%.17g", v) .. '"'
  end
  if t == "string" then return json.encode(v) end
  if t == "table" then
    local n = #v
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    if n > 0 and #keys == n then
      local out = {}
      for i = 1, n do out[i] = enc(v[i]) end
      return "[" .. table.concat(out, ",") .. "]"
    end
    if #keys == 0 then return "[]" end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local out = {}
    for _, k in ipairs(keys) do out[#out + 1] = json.encode(tostring(k)) .. ":" .. enc(v[k]) end
    return "{" .. table.concat(out, ",") .. "}"
  end
  return '"<' .. t .. '>"'
end

local function try(f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] then return { error = tostring(r[2]):gsub("^.-:%d+: ", "") } end
  return { ok = true, table.unpack(r, 2, r.n) }
end

local f = assert(io.open(arg[2])); local doc = json.decode(f:read("a")); f:close()
local out = assert(io.open(arg[3], "w"))
local flowlib = require("llm_policy.flow")
for _, v in ipairs(doc) do
  local r = {}
  local sort, err
  if v.flow ~= nil then
    local ok, ferr = flowlib.check(v.flow)
    if not ok then r.refused = tostring(ferr) else
      local nf = flowlib.normalize(v.flow)
      r.sort = "Flow"
      r.encoding = flowlib.encode(nf)
      r.fingerprint = flowlib.fingerprint(nf)
    end
    sort = "skip"
  else
    sort, err = T.check(v.term)
  end
  if sort == "skip" then
    -- a flow: done above
  elseif sort == nil then
    r.refused = tostring(err)
  else
    r.sort = sort
    local nf = T.normalize(v.term)
    r.encoding = T.encode(nf)
    r.fingerprint = T.fingerprint(nf)
    local okc, carrier = pcall(ir.interp.eval, nf, ir.interp.default_algebra())
    if not okc then r.eval_error = true; sort = "none" end
    if sort == "Pred" then
      r.verdicts = {}
      for i, c in ipairs(v.candidates) do
        local x = try(carrier, c, v.ctx)
        if x.error then r.verdicts[i] = { error = true } else r.verdicts[i] = { ok = x[1] and true or false, why = (not x[1]) and x[2] or nil } end
      end
    elseif sort == "Policy" then
      local x = try(carrier.plan, v.candidates, v.ctx)
      if x.error then r.plan = { error = true } else
        local p = x[1]
        local ordered, scores, rejected = {}, {}, {}
        for i, e in ipairs(p.ordered) do ordered[i] = e.candidate.provider_id; scores[i] = e.score end
        for i, e in ipairs(p.rejected) do rejected[i] = { provider = e.provider, reason = e.reason } end
        r.plan = { ordered = ordered, scores = scores, rejected = rejected }
        -- the transform on the first ordered candidate (or the first candidate)
        local c = (p.ordered[1] and p.ordered[1].candidate) or v.candidates[1]
        if c then
          local y = try(carrier.mutate, v.request, c, v.ctx)
          r.request = y.error and { error = true } or y[1]
        end
        r.classified = {}
        for i, k in ipairs(v.kinds) do
          local z = try(sequence.classify, carrier.sequence, k)
          r.classified[i] = z.error and { error = true } or z[1]
        end
      end
    elseif sort == "Xform" then
      r.requests = {}
      for i, c in ipairs(v.candidates) do
        local y = try(carrier, v.request, c, v.ctx)
        r.requests[i] = y.error and { error = true } or y[1]
      end
    elseif sort == "FailPlan" then
      r.classified = {}
      for i, k in ipairs(v.kinds) do
        local z = try(sequence.classify, carrier, k)
        r.classified[i] = z.error and { error = true } or z[1]
      end
    end  -- a Scorer or Selector alone: its encoding only (policies evaluate them)
  end
  out:write(enc(r), "\n")
end
out:close()
