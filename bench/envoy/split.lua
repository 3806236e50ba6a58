-- The `lua` bench scenario: the filter's sticky 95/5 split done by Envoy's Lua filter, with the
-- filter's own bucketing so both send every user to the same version:
--   bucket = murmur3_x86_32("everyone:" .. x-user-id, seed 0) % 10000; buckets 0..499 -> canary.
-- The chosen cluster is written into x-split-cluster (replacing whatever the client sent) and
-- the route cache is cleared so the cluster_header route reads it. No key: a random bucket.
local bit = require("bit")
local band, bor, bxor, rol, lshift, rshift, tobit =
  bit.band, bit.bor, bit.bxor, bit.rol, bit.lshift, bit.rshift, bit.tobit

local SALT = "everyone:"
local BUCKETS = 10000
local CANARY_BUCKETS = 500
local C1, C2 = tobit(0xcc9e2d51), tobit(0x1b873593)
local F1, F2 = tobit(0x85ebca6b), tobit(0xc2b2ae35)

-- a * b mod 2^32 on 32-bit values (LuaJIT numbers are doubles: multiply 16-bit halves).
local function mul32(a, b)
  local al, ah = band(a, 0xffff), rshift(a, 16)
  local bl, bh = band(b, 0xffff), rshift(b, 16)
  return tobit(al * bl + band(ah * bl + al * bh, 0xffff) * 65536)
end

local function mix(k)
  return mul32(rol(mul32(k, C1), 15), C2)
end

-- murmur3 x86_32 with seed 0, as an unsigned number.
local function murmur3(s)
  local h, len = 0, #s
  local blocks = len - len % 4
  for i = 1, blocks, 4 do
    local b1, b2, b3, b4 = s:byte(i, i + 3)
    h = bxor(h, mix(bor(b1, lshift(b2, 8), lshift(b3, 16), lshift(b4, 24))))
    h = tobit(mul32(rol(h, 13), 5) + 0xe6546b64)
  end
  local tail = len - blocks
  if tail > 0 then
    local b1, b2, b3 = s:byte(blocks + 1, len)
    local k = b1
    if tail >= 2 then k = bor(k, lshift(b2, 8)) end
    if tail >= 3 then k = bor(k, lshift(b3, 16)) end
    h = bxor(h, mix(k))
  end
  h = bxor(h, len)
  h = mul32(bxor(h, rshift(h, 16)), F1)
  h = mul32(bxor(h, rshift(h, 13)), F2)
  h = bxor(h, rshift(h, 16))
  if h < 0 then h = h + 4294967296 end
  return h
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local key = headers:get("x-user-id")
  local bucket
  if key and #key > 0 then
    bucket = murmur3(SALT .. key) % BUCKETS
  else
    bucket = math.random(0, BUCKETS - 1)
  end
  if bucket < CANARY_BUCKETS then
    headers:replace("x-split-cluster", "canary")
  else
    headers:replace("x-split-cluster", "stable")
  end
  request_handle:clearRouteCache()
end
