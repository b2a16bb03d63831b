"""The orders API: place an order (checks the user and the product over HTTP), list them."""

from __future__ import annotations

from django import forms
from django.http import HttpRequest, JsonResponse

from djscale.errors import ServiceError
from djscale.services import service_client
from shop.api import (
    ERROR,
    GATEWAY_ERROR,
    ID,
    MAX_ID,
    ApiError,
    api,
    body,
    claims,
    json_body,
    openapi,
    reply,
    require_user,
    validated,
)
from shop.orders.models import Order


class NewOrder(forms.Form):
    product_id = forms.IntegerField(min_value=1, max_value=MAX_ID)
    quantity = forms.IntegerField(min_value=1, max_value=100)


def _product(product_id: int) -> dict[str, object]:
    try:
        response = service_client("products").get(f"/api/products/{product_id}", timeout=2.0)
    except ServiceError as exc:
        raise ApiError(503, "dependency_unavailable",
                       f"the products service cannot answer: {exc}") from None
    if response.status_code == 404:
        raise ApiError(400, "invalid_request", "some fields are invalid",
                       {"product_id": [f"no product {product_id}"]})
    if response.status_code != 200:
        raise ApiError(502, "bad_gateway", f"products answered {response.status_code}")
    return dict(response.json())


@api("GET", "POST")
def orders(request: HttpRequest) -> JsonResponse:
    """POST: place an order for the token's user. GET ?user=ID: that user's orders."""
    if request.method == "POST":
        user_id = int(claims(request)["uid"])
        data = validated(NewOrder, body(request))
        product = _product(data["product_id"])
        order = Order.objects.create(
            user_id=user_id, product_id=data["product_id"], quantity=data["quantity"],
            total_cents=int(str(product["price_cents"])) * data["quantity"])
        return JsonResponse(order.as_json(), status=201)
    raw = request.GET.get("user", "")
    # Only ASCII digits ("²".isdigit() is true, int("²") fails) and a bigint's range.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and 1 <= int(raw) <= MAX_ID):
        raise ApiError(400, "invalid_request", "give ?user=<user id>",
                       {"user": ["a positive integer is required"]})
    user_id = int(raw)
    require_user(request, user_id)
    rows = Order.objects.for_key(user_id).filter(user_id=user_id).order_by("-id")[:20]
    return JsonResponse({"results": [o.as_json() for o in rows]})


ORDER = {"type": "object",
         "required": ["id", "user_id", "product_id", "quantity", "total_cents", "status",
                      "created", "shard"],
         "properties": {"id": {"type": "integer"}, "user_id": {"type": "integer"},
                        "product_id": {"type": "integer"}, "quantity": {"type": "integer"},
                        "total_cents": {"type": "integer"}, "status": {"type": "string"},
                        "created": {"type": "string"}, "shard": {"type": "string"}}}
ORDER_REF = {"$ref": "#/components/schemas/Order"}
# The orders service calls products itself: its own 502/503 look like the other errors.
EITHER = {"anyOf": [ERROR, GATEWAY_ERROR]}

schema = openapi("shop orders", {
    "/api/orders/": {
        "post": {"summary": "place an order for the token's user",
                 "security": [{"bearer": []}],
                 "requestBody": json_body({
                     "type": "object", "required": ["product_id", "quantity"],
                     "properties": {"product_id": ID,
                                    "quantity": {"type": "integer", "minimum": 1,
                                                 "maximum": 100}}}),
                 "responses": {"201": reply("placed", ORDER_REF),
                               "400": reply("invalid fields or unknown product (named)"),
                               "502": reply("products answered an error, or the gateway "
                                            "cannot reach orders", EITHER),
                               "503": reply("products cannot answer, or the orders "
                                            "circuit is open", EITHER)}},
        "get": {"summary": "a user's recent orders (own token or staff)",
                "security": [{"bearer": []}],
                "parameters": [{"name": "user", "in": "query", "required": True,
                                "schema": ID}],
                "responses": {"200": reply("the user's recent orders", {
                    "type": "object", "required": ["results"],
                    "properties": {"results": {"type": "array", "items": ORDER_REF}}}),
                              "400": reply("user is not a valid id"),
                              "403": reply("the token belongs to another user")}}},
}, {"Order": ORDER})
