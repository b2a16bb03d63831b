"""The products API: reads from the tiered cache (L1 in process, L2 Redis), staff writes."""

from __future__ import annotations

from django import forms
from django.http import HttpRequest, JsonResponse

from djscale.cache import cached
from djscale.http.cache_control import public_cache
from shop.api import (
    ID,
    MAX_ID,
    NON_BLANK,
    TEXT,
    ApiError,
    api,
    body,
    json_body,
    openapi,
    reply,
    require_staff,
    validated,
)
from shop.products.models import Category, Product


@cached(timeout=300)
def product_card(product_id: int) -> dict[str, object] | None:
    """One product as JSON (None when it does not exist)."""
    found = Product.objects.select_related("category").filter(pk=product_id).first()
    return found.as_json() if found else None


@cached(timeout=60)
def category_page(slug: str) -> list[dict[str, object]]:
    """The products of a category."""
    qs = Product.objects.select_related("category").filter(category__slug=slug).order_by("id")
    return [p.as_json() for p in qs[:100]]


@cached(timeout=60)
def featured() -> list[dict[str, object]]:
    """The featured products."""
    qs = Product.objects.select_related("category").filter(featured=True).order_by("id")
    return [p.as_json() for p in qs[:50]]


@cached(timeout=300)
def categories_list() -> list[dict[str, str]]:
    """Every category."""
    return [{"slug": c.slug, "name": c.name} for c in Category.objects.order_by("slug")]


class NewProduct(forms.Form):
    category = forms.SlugField()
    name = forms.CharField(max_length=200)
    price_cents = forms.IntegerField(min_value=0, max_value=10_000_000)
    featured = forms.BooleanField(required=False)


@public_cache(max_age=30)
@api("GET", "POST")
def products(request: HttpRequest) -> JsonResponse:
    """GET ?category=slug or ?featured=1: cached lists. POST (staff): add a product."""
    if request.method == "POST":
        require_staff(request)
        data = validated(NewProduct, body(request))
        category = Category.objects.filter(slug=data["category"]).first()
        if category is None:
            raise ApiError(400, "invalid_request", "some fields are invalid",
                           {"category": [f"no category {data['category']!r}"]})
        product = Product.objects.create(category=category, name=data["name"],
                                         price_cents=data["price_cents"],
                                         featured=data["featured"])
        category_page.invalidate(category.slug)
        if product.featured:
            featured.invalidate()
        return JsonResponse(product.as_json(), status=201)
    slug = request.GET.get("category")
    if slug:
        return JsonResponse({"results": category_page(slug)})
    return JsonResponse({"results": featured()})


@public_cache(max_age=30)
@api("GET")
def product(request: HttpRequest, product_id: int) -> JsonResponse:
    """One product."""
    card = product_card(product_id) if product_id <= MAX_ID else None
    if card is None:
        raise ApiError(404, "not_found", f"no product {product_id}")
    return JsonResponse(card)


@public_cache(max_age=60)
@api("GET")
def categories(request: HttpRequest) -> JsonResponse:
    """Every category."""
    return JsonResponse({"results": categories_list()})


PRODUCT = {"type": "object", "required": ["id", "name", "price_cents", "featured", "category"],
           "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                          "price_cents": {"type": "integer"}, "featured": {"type": "boolean"},
                          "category": {"type": "string"}}}
PRODUCTS = {"type": "object", "required": ["results"],
            "properties": {"results": {"type": "array",
                                       "items": {"$ref": "#/components/schemas/Product"}}}}

# What NewProduct accepts (Django strips the name before checking its length).
schema = openapi("shop products", {
    "/api/products/": {
        "get": {"summary": "the products of a category, else the featured ones",
                "parameters": [{"name": "category", "in": "query", "required": False,
                                "schema": TEXT}],
                "responses": {"200": reply("products", PRODUCTS)}},
        "post": {"summary": "add a product (staff)", "security": [{"bearer": []}],
                 "requestBody": json_body({
                     "type": "object", "required": ["category", "name", "price_cents"],
                     "properties": {
                         "category": {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$",
                                      "maxLength": 50},
                         "name": {"type": "string", "minLength": 1, "maxLength": 200,
                                  "pattern": NON_BLANK},
                         "price_cents": {"type": "integer", "minimum": 0,
                                         "maximum": 10_000_000},
                         "featured": {"type": "boolean"}}}),
                 "responses": {"201": reply("created", {"$ref": "#/components/schemas/Product"}),
                               "400": reply("invalid fields, or no such category (named)"),
                               "403": reply("staff only")}}},
    "/api/products/{product_id}": {
        "parameters": [{"name": "product_id", "in": "path", "required": True, "schema": ID}],
        "get": {"summary": "one product",
                "responses": {"200": reply("the product",
                                           {"$ref": "#/components/schemas/Product"})}}},
    "/api/products/categories/": {"get": {
        "summary": "every category",
        "responses": {"200": reply("categories", {
            "type": "object", "required": ["results"],
            "properties": {"results": {"type": "array", "items": {
                "type": "object", "required": ["slug", "name"],
                "properties": {"slug": {"type": "string"}, "name": {"type": "string"}}}}}})}}},
}, {"Product": PRODUCT})
