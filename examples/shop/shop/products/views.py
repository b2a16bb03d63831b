"""The products API: reads from the tiered cache (L1 in process, L2 Redis), staff writes."""

from __future__ import annotations

from django import forms
from django.http import HttpRequest, JsonResponse

from djscale.cache import cached
from djscale.http.cache_control import public_cache
from shop.api import ApiError, api, body, openapi, require_staff, validated
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
    card = product_card(product_id)
    if card is None:
        raise ApiError(404, "not_found", f"no product {product_id}")
    return JsonResponse(card)


@public_cache(max_age=60)
@api("GET")
def categories(request: HttpRequest) -> JsonResponse:
    """Every category."""
    return JsonResponse({"results": categories_list()})


schema = openapi("shop products", {
    "/api/products/": {"get": {"parameters": [{"name": "category", "in": "query",
                                           "schema": {"type": "string"}}],
                           "responses": {"200": {"description": "products"}}},
                   "post": {"security": [{"bearer": []}],
                            "responses": {"201": {"description": "created"},
                                          "400": {"description": "invalid fields"},
                                          "403": {"description": "staff only"}}}},
    "/api/products/{product_id}": {"get": {"responses": {"200": {"description": "product"},
                                                     "404": {"description": "none"}}}},
    "/api/products/categories/": {"get": {"responses": {"200": {"description": "categories"}}}},
})
