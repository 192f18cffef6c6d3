#!/usr/bin/env python3
"""Independent reference for fedtune's RDP accountant (tests/common/privacy/rdp_accountant_test.cc).

Written from the definitions, not from the C++ (or Opacus's) series: one step of the sampled Gaussian mechanism has
A_alpha = E_{z ~ N(0, s^2)} [((1 - q) + q exp((2z - 1) / (2 s^2)))^alpha]   (Mironov, Talwar & Zhang 2019, section 3)
and RDP_alpha = log(A_alpha) / (alpha - 1). Integer orders: the binomial sum, evaluated in Python's decimal at 50 digits.
Fractional orders: A_alpha - 1 by numerical integration (scipy.integrate.quad) of
N(z; 0, s^2) * [(1 + u)^alpha - 1 - alpha u],  u = q expm1((2z - 1) / (2 s^2)),
whose alpha u part integrates to 0 exactly and is removed to avoid cancellation when A_alpha is close to 1.
(epsilon, delta) is Opacus's get_privacy_spent conversion over Opacus's default orders.

Usage: rdp_reference.py Q SIGMA STEPS DELTA
Prints one line "EPSILON BEST_ORDER" then, per order, "ORDER RDP" (RDP of all steps; "inf" where the reference
cannot represent it).
"""
import decimal
import math
import sys
from decimal import Decimal

import numpy as np
from scipy import integrate

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)]


def log_a_integer(q, sigma, alpha):
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        q, s2 = Decimal(q), Decimal(sigma) * Decimal(sigma)  # Decimal(float) is exact.
        total = sum(math.comb(alpha, i) * (1 - q) ** (alpha - i) * q ** i * ((i * i - i) / (2 * s2)).exp()
                    for i in range(alpha + 1))
        return float(total.ln())


def log_a_fractional(q, sigma, alpha):
    s2 = sigma * sigma

    def integrand(z):
        x = (2 * z - 1) / (2 * s2)
        log_density = -z * z / (2 * s2) - 0.5 * math.log(2 * math.pi * s2)
        log1p_u = float(np.logaddexp(math.log1p(-q), math.log(q) + x))  # log(1 + u), never overflows
        if abs(alpha * log1p_u) < 1:  # small power: expm1 keeps the digits of (1 + u)^alpha - 1
            u = q * math.expm1(x)
            return math.exp(log_density) * (math.expm1(alpha * log1p_u) - alpha * u)
        # Large power: the density factors are folded into the exponents so nothing overflows.
        return (math.exp(log_density + alpha * log1p_u) - math.exp(log_density) * (1 - alpha * q) -
                alpha * q * math.exp(log_density + x))

    # The integrand's mass lies between the two Gaussians' centres (0 and 1) and up to about alpha (the tilt of
    # N(0, s^2) by exp(alpha z / s^2) is centred at alpha); 40 sigma either side is far beyond double precision.
    lo, hi = -40 * sigma - 1, alpha + 40 * sigma + 1
    points = sorted({0.0, 0.5, 1.0, alpha / 2, alpha})
    value, _ = integrate.quad(integrand, lo, hi, points=points, limit=1000, epsabs=0, epsrel=1e-10)
    return math.log1p(value)


def rdp_one_step(q, sigma, alpha):
    if q == 0:
        return 0.0
    if q == 1:
        return alpha / (2 * sigma * sigma)
    if float(alpha).is_integer():
        return log_a_integer(q, sigma, int(alpha)) / (alpha - 1)
    return log_a_fractional(q, sigma, alpha) / (alpha - 1)


def main():
    q, sigma, steps, delta = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    rdp = np.array([rdp_one_step(q, sigma, a) * steps for a in ORDERS])
    orders = np.array(ORDERS)
    eps = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    k = int(np.nanargmin(eps))
    print(repr(float(max(eps[k], 0.0))), repr(float(orders[k])))
    for a, r in zip(ORDERS, rdp):
        print(repr(a), repr(float(r)))


if __name__ == "__main__":
    main()
