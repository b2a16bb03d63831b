"""The products API: reads from the tiered cache (L1 in process, L2 Redis), staff writes.

Every cached result and every public response carries the tags of what it shows
(``products.product:<id>``, ``products.category:<slug>``, ``products.featured``); a committed
save or delete of a product (``shop.products.apps``) evicts those cache entries in every
process and purges them at the edge (djscale.edge), so no view invalidates by hand.
"""

from __future__ import annotations

import re

from django import forms
from django.db import router, transaction
from django.http import HttpRequest, JsonResponse

from djscale.cache import cached
from djscale.db import use_primary
from djscale.edge import add_tags, edge_tags
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

_SLUG = re.compile(r"[-a-zA-Z0-9_]+")


@cached(timeout=300, tags=lambda product_id: [f"products.product:{product_id}"])
def product_card(product_id: int) -> dict[str, object] | None:
    """One product as JSON (None when it does not exist)."""
    found = Product.objects.select_related("category").filter(pk=product_id).first()
    return found.as_json() if found else None


@cached(timeout=60, tags=lambda slug: [f"products.category:{slug}"])
def category_page(slug: str) -> list[dict[str, object]]:
    """The products of a category."""
    qs = Product.objects.select_related("category").filter(category__slug=slug).order_by("id")
    return [p.as_json() for p in qs[:100]]


@cached(timeout=60, tags=lambda: ["products.featured"])
def featured() -> list[dict[str, object]]:
    """The featured products."""
    qs = Product.objects.select_related("category").filter(featured=True).order_by("id")
    return [p.as_json() for p in qs[:50]]


@cached(timeout=300, tags=lambda: ["products.category"])
def categories_list() -> list[dict[str, str]]:
    """Every category."""
    return [{"slug": c.slug, "name": c.name} for c in Category.objects.order_by("slug")]


class ProductChange(forms.Form):
    name = forms.CharField(max_length=200, required=False)
    price_cents = forms.IntegerField(min_value=0, max_value=10_000_000, required=False)
    featured = forms.BooleanField(required=False)


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
        # What the new row refers to is read where the row is written: a replica a few
        # milliseconds behind would refuse a category created just before.
        with use_primary():
            category = Category.objects.filter(slug=data["category"]).first()
        if category is None:
            raise ApiError(400, "invalid_request", "some fields are invalid",
                           {"category": [f"no category {data['category']!r}"]})
        product = Product.objects.create(category=category, name=data["name"],
                                         price_cents=data["price_cents"],
                                         featured=data["featured"])
        return JsonResponse(product.as_json(), status=201)
    slug = request.GET.get("category")
    if slug and not _SLUG.fullmatch(slug):
        # No category has such a slug, and it must not reach the Surrogate-Key header
        # (control or non-ASCII characters there are a 500): an empty list, class-tagged.
        return add_tags(JsonResponse({"results": []}), "products.category")
    if slug:
        return add_tags(JsonResponse({"results": category_page(slug)}),
                        f"products.category:{slug}")
    return add_tags(JsonResponse({"results": featured()}), "products.featured")


@public_cache(max_age=30)
@api("GET", "PATCH")
@edge_tags(lambda request, product_id: [f"products.product:{product_id}"])
def product(request: HttpRequest, product_id: int) -> JsonResponse:
    """GET one product. PATCH (staff): change its name, price or featured flag."""
    if request.method == "PATCH":
        require_staff(request)
        raw = body(request)
        data = validated(ProductChange, raw)
        changed = [name for name in ("name", "price_cents", "featured") if name in raw]
        # Read, change and write on the primary, the row locked: a replica's copy may miss
        # a change committed just before, and writing it back would undo that change.
        with transaction.atomic(using=router.db_for_write(Product)):
            found = Product.objects.select_for_update(of=("self",)).select_related("category") \
                .filter(pk=product_id).first() if product_id <= MAX_ID else None
            if found is None:
                raise ApiError(404, "not_found", f"no product {product_id}")
            if "name" in raw and not data["name"]:
                raise ApiError(400, "invalid_request", "some fields are invalid",
                               {"name": ["This field may not be blank."]})
            if "price_cents" in raw and data["price_cents"] is None:
                # Django's IntegerField takes null, "", [] and {} for "no value": not here.
                raise ApiError(400, "invalid_request", "some fields are invalid",
                               {"price_cents": ["This field may not be empty."]})
            for name in changed:
                setattr(found, name, data[name])
            found.save(update_fields=changed)
        return JsonResponse(found.as_json())
    card = product_card(product_id) if product_id <= MAX_ID else None
    if card is None:
        raise ApiError(404, "not_found", f"no product {product_id}")
    return JsonResponse(card)


@public_cache(max_age=60)
@api("GET")
@edge_tags("products.category")
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
                                           {"$ref": "#/components/schemas/Product"})}},
        "patch": {"summary": "change a product (staff)", "security": [{"bearer": []}],
                  "requestBody": json_body({
                      "type": "object",
                      "properties": {
                          "name": {"type": "string", "minLength": 1, "maxLength": 200,
                                   "pattern": NON_BLANK},
                          "price_cents": {"type": "integer", "minimum": 0,
                                          "maximum": 10_000_000},
                          "featured": {"type": "boolean"}}}),
                  "responses": {"200": reply("the changed product",
                                             {"$ref": "#/components/schemas/Product"}),
                                "400": reply("invalid fields (named)"),
                                "403": reply("staff only"),
                                "404": reply("no such product")}}},
    "/api/products/categories/": {"get": {
        "summary": "every category",
        "responses": {"200": reply("categories", {
            "type": "object", "required": ["results"],
            "properties": {"results": {"type": "array", "items": {
                "type": "object", "required": ["slug", "name"],
                "properties": {"slug": {"type": "string"}, "name": {"type": "string"}}}}}})}}},
}, {"Product": PRODUCT})
