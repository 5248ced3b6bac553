-- sluice.crypto: the one place where libcrypto (OpenSSL) is bound through
-- LuaJIT FFI.  jwt, rollout and mask use it; nothing here keeps global state
-- besides the library handle, a few fetched digest objects and a small cache
-- of parsed public keys.
--
-- API
--   crypto.sha256(data)            -> 32-byte raw digest
--   crypto.sha256_u32(data)        -> first 4 digest bytes as a big-endian
--                                     unsigned integer (0 .. 2^32-1), no string
--                                     allocated (rollout's hot path)
--   crypto.hmac(md, key, data)     -> raw HMAC; md is "sha256"|"sha384"|"sha512"
--   crypto.hex(raw)                -> lowercase hex
--   crypto.equal(a, b)             -> constant-time (CRYPTO_memcmp) equality of
--                                     two strings; different lengths -> false
--   crypto.random_bytes(n)         -> n bytes from RAND_bytes
--   crypto.public_key(pem)         -> key | nil, err   (cached per PEM text)
--        key.kind  "RSA" | "EC" | other OpenSSL base id as a string
--        key.bits  key size in bits
--        key.curve group name for EC keys ("prime256v1"), when available
--   crypto.verify(key, md, data, sig) -> true | false
--        EVP_DigestVerify with the given digest; sig in the key's native
--        format (PKCS#1 v1.5 for RSA, DER ECDSA-Sig-Value for EC)
--
-- Compatible with OpenSSL 3.x (primary target) and 1.1.1: functions renamed
-- in 3.0 are looked up under both names.

local ffi = require "ffi"

local C_DECLS = {
  "typedef struct evp_md_st EVP_MD;",
  "typedef struct evp_md_ctx_st EVP_MD_CTX;",
  "typedef struct evp_pkey_st EVP_PKEY;",
  "typedef struct evp_pkey_ctx_st EVP_PKEY_CTX;",
  "typedef struct engine_st ENGINE;",
  "typedef struct bio_st BIO;",
  "typedef struct x509_st X509;",
  "typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;",
  "const EVP_MD *EVP_sha256(void);",
  "const EVP_MD *EVP_sha384(void);",
  "const EVP_MD *EVP_sha512(void);",
  "EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *ctx, const char *algorithm, const char *properties);",
  "int EVP_Digest(const void *data, size_t count, unsigned char *md, unsigned int *size, const EVP_MD *type, ENGINE *impl);",
  "unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len, const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);",
  "int CRYPTO_memcmp(const void *a, const void *b, size_t len);",
  "int RAND_bytes(unsigned char *buf, int num);",
  "EVP_MD_CTX *EVP_MD_CTX_new(void);",
  "void EVP_MD_CTX_free(EVP_MD_CTX *ctx);",
  "int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const EVP_MD *type, ENGINE *e, EVP_PKEY *pkey);",
  "int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen, const unsigned char *tbs, size_t tbslen);",
  "BIO *BIO_new_mem_buf(const void *buf, int len);",
  "int BIO_free(BIO *a);",
  "EVP_PKEY *PEM_read_bio_PUBKEY(BIO *bp, EVP_PKEY **x, void *cb, void *u);",
  "X509 *PEM_read_bio_X509(BIO *bp, X509 **x, void *cb, void *u);",
  "EVP_PKEY *X509_get_pubkey(X509 *x);",
  "void X509_free(X509 *a);",
  "void EVP_PKEY_free(EVP_PKEY *pkey);",
  "int EVP_PKEY_get_base_id(const EVP_PKEY *pkey);",
  "int EVP_PKEY_base_id(const EVP_PKEY *pkey);",
  "int EVP_PKEY_get_bits(const EVP_PKEY *pkey);",
  "int EVP_PKEY_bits(const EVP_PKEY *pkey);",
  "int EVP_PKEY_get_group_name(const EVP_PKEY *pkey, char *name, size_t name_sz, size_t *gname_len);",
  "unsigned long ERR_get_error(void);",
  "void ERR_clear_error(void);",
  "void ERR_error_string_n(unsigned long e, char *buf, size_t len);",
}

-- Declare one by one: another module of the process may already have
-- declared some of these (ffi.cdef refuses redefinitions); that is fine as
-- long as the declaration is compatible.
for i = 1, #C_DECLS do pcall(ffi.cdef, C_DECLS[i]) end

local function load_libcrypto()
  local errs = {}
  for _, name in ipairs { "crypto", "libcrypto.so.3", "libcrypto.so.1.1" } do
    local ok, lib = pcall(ffi.load, name)
    if ok then return lib end
    errs[#errs + 1] = tostring(lib)
  end
  error("sluice.crypto: cannot load libcrypto (OpenSSL): " .. table.concat(errs, "; "), 2)
end

local C = load_libcrypto()

-- Resolve a symbol that may be missing (renamed between 1.1 and 3.0).
local function sym(...)
  for i = 1, select("#", ...) do
    local name = select(i, ...)
    local ok, f = pcall(function() return C[name] end)
    if ok and f ~= nil then return f end
  end
  return nil
end

local M = { lib = C }

local EVP_PKEY_RSA = 6
local EVP_PKEY_EC = 408

local get_base_id = sym("EVP_PKEY_get_base_id", "EVP_PKEY_base_id")
local get_bits = sym("EVP_PKEY_get_bits", "EVP_PKEY_bits")
local get_group_name = sym("EVP_PKEY_get_group_name")
local md_fetch = sym("EVP_MD_fetch")

-- Digest objects.  On OpenSSL 3 an explicitly fetched EVP_MD avoids an
-- implicit provider fetch on every EVP_Digest call (several times faster for
-- short inputs).  Fetched objects live as long as the process; they are not
-- freed on purpose (there are three of them).
local MDS = {}
do
  local legacy = { sha256 = "EVP_sha256", sha384 = "EVP_sha384", sha512 = "EVP_sha512" }
  local fetch_name = { sha256 = "SHA256", sha384 = "SHA384", sha512 = "SHA512" }
  for name, fn in pairs(legacy) do
    local md
    if md_fetch then md = md_fetch(nil, fetch_name[name], nil) end
    if md == nil then md = C[fn]() end
    if md == nil then error("sluice.crypto: digest " .. name .. " unavailable") end
    MDS[name] = md
  end
end
M.digests = MDS

local function md_of(name)
  local md = MDS[name]
  if not md then error("sluice.crypto: unknown digest '" .. tostring(name) .. "'", 3) end
  return md
end

local OUT = ffi.new("unsigned char[64]")
local OUTLEN = ffi.new("unsigned int[1]")

local function last_error()
  local e = C.ERR_get_error()
  if e == 0 then return "unknown OpenSSL error" end
  local buf = ffi.new("char[256]")
  C.ERR_error_string_n(e, buf, 256)
  C.ERR_clear_error()
  return ffi.string(buf)
end
M.last_error = last_error

local SHA256_MD = MDS.sha256

function M.sha256(data)
  if C.EVP_Digest(data, #data, OUT, OUTLEN, SHA256_MD, nil) ~= 1 then
    error("sluice.crypto: SHA-256 failed: " .. last_error(), 2)
  end
  return ffi.string(OUT, 32)
end

function M.sha256_u32(data)
  if C.EVP_Digest(data, #data, OUT, nil, SHA256_MD, nil) ~= 1 then
    error("sluice.crypto: SHA-256 failed: " .. last_error(), 2)
  end
  -- Plain arithmetic keeps the result a non-negative Lua number (bit.* would
  -- give a signed 32-bit value).
  return ((OUT[0] * 256 + OUT[1]) * 256 + OUT[2]) * 256 + OUT[3]
end

function M.hmac(mdname, key, data)
  local md = md_of(mdname)
  if C.HMAC(md, key, #key, data, #data, OUT, OUTLEN) == nil then
    error("sluice.crypto: HMAC failed: " .. last_error(), 2)
  end
  return ffi.string(OUT, OUTLEN[0])
end

local HEX = {}
for i = 0, 255 do HEX[i] = string.format("%02x", i) end
function M.hex(s)
  local n = #s
  local t = {}
  for i = 1, n do t[i] = HEX[s:byte(i)] end
  return table.concat(t)
end

function M.equal(a, b)
  if type(a) ~= "string" or type(b) ~= "string" then return false end
  if #a ~= #b then return false end
  if #a == 0 then return true end
  return C.CRYPTO_memcmp(a, b, #a) == 0
end

function M.random_bytes(n)
  local buf = ffi.new("unsigned char[?]", n)
  if C.RAND_bytes(buf, n) ~= 1 then
    error("sluice.crypto: RAND_bytes failed: " .. last_error(), 2)
  end
  return ffi.string(buf, n)
end

---------------------------------------------------------------------------
-- Public keys

local KIND = { [EVP_PKEY_RSA] = "RSA", [EVP_PKEY_EC] = "EC" }

local function read_pkey(pem)
  local bio = C.BIO_new_mem_buf(pem, #pem)
  if bio == nil then return nil, "out of memory" end
  local pkey
  if pem:find("-----BEGIN CERTIFICATE-----", 1, true) then
    local x509 = C.PEM_read_bio_X509(bio, nil, nil, nil)
    if x509 ~= nil then
      pkey = C.X509_get_pubkey(x509)
      C.X509_free(x509)
    end
  else
    pkey = C.PEM_read_bio_PUBKEY(bio, nil, nil, nil)
  end
  C.BIO_free(bio)
  if pkey == nil then
    local err = last_error()
    C.ERR_clear_error()
    return nil, "cannot parse public key (expected a PEM 'PUBLIC KEY' or 'CERTIFICATE'): " .. err
  end
  return ffi.gc(pkey, C.EVP_PKEY_free)
end

-- Cache of parsed keys, keyed by the PEM text.  Bounded so that an app that
-- builds PEM strings dynamically cannot grow it without limit: when full it
-- is emptied (the EVP_PKEYs are freed by their ffi.gc finaliser once no
-- verifier holds them).
local KEY_CACHE, key_cache_n, KEY_CACHE_MAX = {}, 0, 64

function M.public_key(pem)
  if type(pem) ~= "string" or pem == "" then
    return nil, "public key must be a non-empty PEM string"
  end
  local k = KEY_CACHE[pem]
  if k then return k end
  local pkey, err = read_pkey(pem)
  if not pkey then return nil, err end
  local id = get_base_id and get_base_id(pkey) or -1
  k = { pkey = pkey, kind = KIND[id] or tostring(id), bits = get_bits and get_bits(pkey) or 0 }
  if k.kind == "EC" and get_group_name then
    local buf, len = ffi.new("char[80]"), ffi.new("size_t[1]")
    if get_group_name(pkey, buf, 80, len) == 1 then k.curve = ffi.string(buf, len[0]) end
  end
  if key_cache_n >= KEY_CACHE_MAX then KEY_CACHE, key_cache_n = {}, 0 end
  KEY_CACHE[pem] = k
  key_cache_n = key_cache_n + 1
  return k
end

function M.verify(key, mdname, data, sig)
  local md = md_of(mdname)
  local ctx = C.EVP_MD_CTX_new()
  if ctx == nil then error("sluice.crypto: EVP_MD_CTX_new failed", 2) end
  local ok = false
  if C.EVP_DigestVerifyInit(ctx, nil, md, nil, key.pkey) == 1 then
    ok = C.EVP_DigestVerify(ctx, sig, #sig, data, #data) == 1
  end
  C.EVP_MD_CTX_free(ctx)
  if not ok then C.ERR_clear_error() end
  return ok
end

return M
