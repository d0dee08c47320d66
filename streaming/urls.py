from django.urls import path

from streaming import views

urlpatterns = [
    path("health", views.health, name="health"),
]
