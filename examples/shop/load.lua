-- Mixed load for wrk through the shop's gateway (make demo):
-- featured products, product pages, category pages, and user profiles (users + orders
-- services called concurrently by the gateway). SHOP_PRODUCTS, SHOP_USERS and SHOP_TOKEN
-- (a staff token, allowed to read any profile) come from the environment.
local products = tonumber(os.getenv("SHOP_PRODUCTS") or "100")
local users = tonumber(os.getenv("SHOP_USERS") or "10")
local auth = { ["Authorization"] = "Bearer " .. (os.getenv("SHOP_TOKEN") or "") }
local n = 0

request = function()
  n = n + 1
  local kind = n % 8
  if kind == 0 then
    return wrk.format("GET", "/api/products/")
  elseif kind < 4 then
    return wrk.format("GET", "/api/products/" .. math.random(1, products))
  elseif kind < 6 then
    return wrk.format("GET", "/api/products/?category=cat-" .. math.random(0, 19))
  else
    return wrk.format("GET", "/api/profile/" .. math.random(1, users), auth)
  end
end
