"""URLs of the query-inspection and shared-media tests (under ``/queryapp/``)."""

from django.urls import include, path

from tests.queryapp import views

urlpatterns = [
    path("books/lazy", views.books_lazy, name="books-lazy"),
    path("books/eager", views.books_eager, name="books-eager"),
    path("authors/lazy", views.authors_lazy, name="authors-lazy"),
    path("authors/deliberate", views.authors_deliberate, name="authors-deliberate"),
    path("authors/deliberate-decorated", views.authors_deliberate_decorated),
    path("authors/unmarked", views.authors_unmarked, name="authors-unmarked"),
    path("budget/decorated-2", views.three_queries_budget_two),
    path("budget/decorated-3", views.three_queries_budget_three),
    path("budget/url-2", views.three_queries, {"max_queries": 2}),
    path("budget/url-3", views.three_queries, {"max_queries": 3}),
    path("budget/settings", views.three_queries, name="budget-by-settings"),
    path("upload", views.upload),
    path("", include("djscale.storage.urls")),
]
