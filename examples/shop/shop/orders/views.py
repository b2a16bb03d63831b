"""The orders API: place an order (checks the user and the product over HTTP), list them."""

from __future__ import annotations

from django import forms
from django.http import HttpRequest, JsonResponse

from djscale.errors import ServiceError
from djscale.services import service_client
from shop.api import ApiError, api, body, claims, openapi, require_user, validated
from shop.orders.models import Order


class NewOrder(forms.Form):
    product_id = forms.IntegerField(min_value=1)
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
    if not raw.isdigit():
        raise ApiError(400, "invalid_request", "give ?user=<user id>",
                       {"user": ["a positive integer is required"]})
    user_id = int(raw)
    require_user(request, user_id)
    rows = Order.objects.for_key(user_id).filter(user_id=user_id).order_by("-id")[:20]
    return JsonResponse({"results": [o.as_json() for o in rows]})


schema = openapi("shop orders", {
    "/api/orders/": {
        "post": {"security": [{"bearer": []}],
                 "responses": {"201": {"description": "placed"},
                               "400": {"description": "invalid fields or unknown product"},
                               "401": {"description": "no token"}}},
        "get": {"security": [{"bearer": []}],
                "parameters": [{"name": "user", "in": "query", "required": True,
                                "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "the user's recent orders"}}}},
})
