// Fused CPU kernels of the Behler-Parrinello descriptor (aiida_mlff/core/descriptors.py).
//
// ``features``: for every atom, the sums over its neighbours (radial Gaussians; angular Gaussians times weighted
// monomials of the unit vector; squared angular Gaussians) and the features built from them (G2, G5, chirality),
// as Descriptor.accumulate followed by Descriptor.combine. ``forces``: from the gradients of the energies with
// respect to the features, the chain rule back through the features and the sums to every pair vector
// (Descriptor.combine_backward and Descriptor.pair_gradients), then the forces. Both walk a full neighbour list
// sorted by centre atom (CSR rows, ``sort_pairs``) but evaluate only one pair of every i -> j, j -> i couple (``keep``),
// for both atoms; sums and forces of other atoms go to per-thread copies that are added up at the end; one
// atom at a time, with that atom's pairs in flat arrays (so the loops over pairs vectorise); threads come from
// torch's pool (torch.set_num_threads). Pair vectors r_ij = positions[j] - positions[i] + shift [Angstrom].
//
// Sums per (atom, neighbour element e), as Descriptor.accumulate lays them out:
//   radial  (N * E, K)       sum_{j in e} exp(-eta_r (d - c_k)^2) fc_r(d)
//   moments (N * E, S * Mo)  sum_{j in e} g_s(d) w_m u^m, column s * Mo + m, g_s = exp(-eta_a (d - c_s)^2) fc_a(d)
//   diag    (N * E, S)       sum_{j in e} g_s(d)^2
// fc is the cosine cutoff 0.5 (cos(pi d / rc) + 1); the Mo monomials u_x^a u_y^b u_z^c have weights w_m.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

constexpr int MAX_POWER = 5;      // monomial orders up to 4
constexpr int MAX_ELEMENTS = 64;  // elements of one model

// Sizes and index tables of the descriptor (int64 tensors from Python).
struct Spec {
  int64_t E, K, S, Mo, AB, C, T, O;  // elements, radial and angular Gaussians, monomials, element pairs, G5
                                     // (zeta, lambda) combinations, chirality triples, monomial orders
  int64_t n_g2, n_g5, F;
  double rc, ra, eta_r, eta_a;
  const int64_t *exps, *pair_a, *pair_b, *mono_order, *triples;
  int64_t stride;  // sums of one atom: E * (K + S * Mo + S)
};

// Real-valued tables: Gaussian centres [Angstrom], monomial weights, G5 pair factors, same-element flags and the
// (order, combination) coefficients of G5.
template <typename T>
struct Tables {
  const T *rc_r, *rc_a, *weights, *pair_factor, *pair_same, *coeff;
};

// The pairs of one centre atom within the cutoff, with what the kernels need of them, in flat per-pair arrays.
template <typename T>
struct Row {
  // list position, bucket of the sort, neighbour and its element (of the sorted pairs)
  std::vector<int64_t> pair, bucket, partner, element;
  std::vector<T> vx, vy, vz, d2, d, ux, uy, uz, fc, dfc, radial, radial_slope, angular, angular_slope, mono;
  // pairs within the cutoff, sorted: angular ones (d < angular cutoff) by element, then the others by element;
  // element e's angular pairs are [inner[e], inner[e + 1]), its other pairs [outer[e], outer[e + 1])
  std::vector<int64_t> inner, outer;
  int64_t n = 0, n_angular = 0;

  void reserve(int64_t len, const Spec& sp) {
    inner.resize(sp.E + 1), outer.resize(sp.E + 1);
    if (static_cast<int64_t>(bucket.size()) >= len) return;
    pair.resize(len), bucket.resize(len), partner.resize(len), element.resize(len);
    for (auto* v : {&vx, &vy, &vz, &d2, &d, &ux, &uy, &uz, &fc, &dfc}) v->resize(len);
    radial.resize(sp.K * len), radial_slope.resize(sp.K * len);
    angular.resize(sp.S * len), angular_slope.resize(sp.S * len), mono.resize(4 * sp.Mo * len);
  }
};

// value[q * K + k] = exp(-eta (d_q - c_k)^2) fc_q and, with ``slopes``, its derivative with respect to d_q
// (pair-major: the K values of a pair are contiguous, so sums over pairs vectorise over k).
template <typename T>
void gaussian_block(const T* d, const T* fc, const T* dfc, int64_t n, const T* centres, int64_t K, double eta,
                    bool slopes, T* value, T* slope) {
  const T e = static_cast<T>(eta), two_e = static_cast<T>(2.0 * eta);
  for (int64_t q = 0; q < n; ++q) {
    const T r = d[q], f = fc[q], df = dfc[q];
    T* v = value + q * K;
    T* s = slope + q * K;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
      const T x = r - centres[k];
      const T g = std::exp(-e * x * x);
      v[k] = g * f;
      if (slopes) s[k] = g * (df - two_e * x * f);
    }
  }
}

template <typename T>
void cutoff_block(const T* d, int64_t n, double rc, T* fc, T* dfc) {
  const T w = static_cast<T>(M_PI / rc);
#pragma omp simd
  for (int64_t q = 0; q < n; ++q) {
    fc[q] = T(0.5) * std::cos(w * d[q]) + T(0.5);
    dfc[q] = T(-0.5) * w * std::sin(w * d[q]);
  }
}

// md[(q * Mo + m) * 4 + c]: c = 0 the monomial w_m u_q^m, c = 1, 2, 3 its derivatives by u_x, u_y, u_z.
template <typename T>
void monomial_block(const Spec& sp, const Tables<T>& tab, Row<T>& row, int64_t n) {
  for (int64_t q = 0; q < n; ++q) {
    const T u[3] = {row.ux[q], row.uy[q], row.uz[q]};
    T pw[3][MAX_POWER];
    for (int c = 0; c < 3; ++c) {
      pw[c][0] = T(1);
      for (int k = 1; k < MAX_POWER; ++k) pw[c][k] = pw[c][k - 1] * u[c];
    }
    T* out = row.mono.data() + q * sp.Mo * 4;
    for (int64_t m = 0; m < sp.Mo; ++m) {
      const int64_t a = sp.exps[3 * m], b = sp.exps[3 * m + 1], c = sp.exps[3 * m + 2];
      const T w = tab.weights[m];
      out[4 * m] = w * pw[0][a] * pw[1][b] * pw[2][c];
      out[4 * m + 1] = a ? w * a * pw[0][a - 1] * pw[1][b] * pw[2][c] : T(0);
      out[4 * m + 2] = b ? w * b * pw[0][a] * pw[1][b - 1] * pw[2][c] : T(0);
      out[4 * m + 3] = c ? w * c * pw[0][a] * pw[1][b] * pw[2][c - 1] : T(0);
    }
  }
}

// Collect the kept pairs of atom i within the cutoff (angular ones first), then cutoffs, Gaussians and monomials.
// ``keep`` marks one pair of every i -> j, j -> i couple: every pair is evaluated once and counts for both atoms.
template <typename T>
void fill_row(const Spec& sp, const Tables<T>& tab, const T* pos, const T* shift, const int64_t* rowptr,
              const int64_t* nbr, const bool* keep, const int64_t* species, int64_t i, bool slopes, Row<T>& row) {
  const int64_t begin = rowptr[i], len = rowptr[i + 1] - begin;
  row.reserve(len, sp);
  T *vx = row.vx.data(), *vy = row.vy.data(), *vz = row.vz.data(), *d2 = row.d2.data();
  const T xi = pos[3 * i], yi = pos[3 * i + 1], zi = pos[3 * i + 2];
  const int64_t* nb = nbr + begin;
  const T* sh = shift + 3 * begin;
  for (int64_t p = 0; p < len; ++p) {
    const int64_t j = nb[p];
    vx[p] = pos[3 * j] - xi + sh[3 * p];
    vy[p] = pos[3 * j + 1] - yi + sh[3 * p + 1];
    vz[p] = pos[3 * j + 2] - zi + sh[3 * p + 2];
    d2[p] = vx[p] * vx[p] + vy[p] * vy[p] + vz[p] * vz[p];
  }
  // a counting sort into 2E + 1 buckets: angular pairs by element, the other pairs within the cutoff by element,
  // then the pairs beyond the cutoff (dropped)
  const T rc2 = static_cast<T>(sp.rc * sp.rc), ra2 = static_cast<T>(sp.ra * sp.ra);
  const int64_t E = sp.E;
  int64_t* bucket = row.bucket.data();
  int64_t count[2 * MAX_ELEMENTS + 2] = {0};
  for (int64_t p = 0; p < len; ++p) {
    const int64_t e = species[nb[p]];
    const bool inside = keep[begin + p] && d2[p] > 0 && d2[p] < rc2;
    const int64_t b = inside ? (d2[p] < ra2 ? e : E + e) : 2 * E;
    bucket[p] = b;
    ++count[b + 1];
  }
  for (int64_t b = 0; b < 2 * E + 1; ++b) count[b + 1] += count[b];
  for (int64_t e = 0; e <= E; ++e) row.inner[e] = count[e], row.outer[e] = count[E + e];
  int64_t* idx = row.pair.data();
  for (int64_t p = 0; p < len; ++p) idx[count[bucket[p]]++] = p;
  const int64_t n_inner = row.inner[E], n = row.outer[E];
  T *d = row.d.data(), *ux = row.ux.data(), *uy = row.uy.data(), *uz = row.uz.data();
  for (int64_t q = 0; q < n; ++q) {
    const int64_t p = idx[q];
    const T r = std::sqrt(d2[p]);
    d[q] = r, ux[q] = vx[p] / r, uy[q] = vy[p] / r, uz[q] = vz[p] / r;
    row.partner[q] = nb[p];
    row.element[q] = species[nb[p]];
    idx[q] = begin + p;
  }
  row.n = n, row.n_angular = n_inner;
  cutoff_block(d, n, sp.rc, row.fc.data(), row.dfc.data());
  gaussian_block(d, row.fc.data(), row.dfc.data(), n, tab.rc_r, sp.K, sp.eta_r, slopes, row.radial.data(),
                 row.radial_slope.data());
  if (n_inner == 0) return;
  cutoff_block(d, n_inner, sp.ra, row.fc.data(), row.dfc.data());  // the angular terms have their own cutoff
  gaussian_block(d, row.fc.data(), row.dfc.data(), n_inner, tab.rc_a, sp.S, sp.eta_a, slopes, row.angular.data(),
                 row.angular_slope.data());
  monomial_block(sp, tab, row, n_inner);
}

// Add the pairs of atom i's row to the sums of i (slot of j's element, unit vector u) and of j (slot of i's
// element, -u: monomials times (-1)^order). ``sums`` holds E * (K + S * Mo + S) values per atom.
template <typename T>
void row_accumulate(const Spec& sp, const Row<T>& row, int64_t i, int64_t e_i, const T* parity, T* sums) {
  const int64_t K = sp.K, S = sp.S, Mo = sp.Mo, n = row.n, na = row.n_angular;
  const int64_t mom0 = sp.E * K, diag0 = sp.E * (K + S * Mo);
  T* own = sums + i * sp.stride;
  for (int64_t q = 0; q < n; ++q) {
    const int64_t e = row.element[q];
    T* other = sums + row.partner[q] * sp.stride;
    const T* g = row.radial.data() + q * K;
    T* a = own + e * K;
    T* b = other + e_i * K;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) a[k] += g[k];
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) b[k] += g[k];
    if (q >= na) continue;
    const T* md = row.mono.data() + q * Mo * 4;
    for (int64_t s = 0; s < S; ++s) {
      const T ga = row.angular[q * S + s];
      T* ma = own + mom0 + (e * S + s) * Mo;
      T* mb = other + mom0 + (e_i * S + s) * Mo;
      for (int64_t m = 0; m < Mo; ++m) {
        const T v = ga * md[4 * m];
        ma[m] += v;
        mb[m] += parity[m] * v;
      }
      own[diag0 + e * S + s] += ga * ga;
      other[diag0 + e_i * S + s] += ga * ga;
    }
  }
}

template <typename T>
inline void cross(const T* a, const T* b, T* out) {
  out[0] = a[1] * b[2] - a[2] * b[1];
  out[1] = a[2] * b[0] - a[0] * b[2];
  out[2] = a[0] * b[1] - a[1] * b[0];
}

// Features of one atom from its sums (Descriptor.combine): G2, then G5, then signed chirality terms.
template <typename T>
void atom_features(const Spec& sp, const Tables<T>& tab, const T* rad, const T* mom, const T* diag, T* out) {
  const int64_t S = sp.S, Mo = sp.Mo, C = sp.C, O = sp.O;
  for (int64_t k = 0; k < sp.n_g2; ++k) out[k] = rad[k];
  T q[MAX_POWER];
  for (int64_t ab = 0; ab < sp.AB; ++ab) {
    const int64_t a = sp.pair_a[ab], b = sp.pair_b[ab];
    for (int64_t s = 0; s < S; ++s) {
      const T* left = mom + (a * S + s) * Mo;
      const T* right = mom + (b * S + s) * Mo;
      for (int64_t o = 0; o < O; ++o) q[o] = -tab.pair_same[ab] * diag[a * S + s];
      for (int64_t m = 0; m < Mo; ++m) q[sp.mono_order[m]] += left[m] * right[m];
      T* g5 = out + sp.n_g2 + (ab * S + s) * C;
      for (int64_t c = 0; c < C; ++c) {
        T v = 0;
        for (int64_t o = 0; o < O; ++o) v += tab.coeff[o * C + c] * q[o];
        g5[c] = tab.pair_factor[ab] * v;
      }
    }
  }
  for (int64_t t = 0; t < sp.T; ++t) {
    const T* v0 = mom + sp.triples[3 * t] * Mo + 1;  // channel (element, Gaussian): its order-1 monomials x, y, z
    const T* v1 = mom + sp.triples[3 * t + 1] * Mo + 1;
    const T* v2 = mom + sp.triples[3 * t + 2] * Mo + 1;
    T c[3];
    cross(v1, v2, c);
    out[sp.n_g2 + sp.n_g5 + t] = v0[0] * c[0] + v0[1] * c[1] + v0[2] * c[2];
  }
}

// Gradients of the sums of one atom from the gradients of its features (Descriptor.combine_backward).
template <typename T>
void atom_sum_gradients(const Spec& sp, const Tables<T>& tab, const T* mom, const T* gfeat, T* grad, T* gmom,
                        T* gdiag) {
  const int64_t S = sp.S, Mo = sp.Mo, C = sp.C, O = sp.O;
  for (int64_t k = 0; k < sp.n_g2; ++k) grad[k] = gfeat[k];
  std::fill(gmom, gmom + sp.E * S * Mo, T(0));
  std::fill(gdiag, gdiag + sp.E * S, T(0));
  T gq[MAX_POWER];
  for (int64_t ab = 0; ab < sp.AB; ++ab) {
    const int64_t a = sp.pair_a[ab], b = sp.pair_b[ab];
    for (int64_t s = 0; s < S; ++s) {
      const T* g5 = gfeat + sp.n_g2 + (ab * S + s) * C;
      T total = 0;
      for (int64_t o = 0; o < O; ++o) {
        T v = 0;
        for (int64_t c = 0; c < C; ++c) v += tab.coeff[o * C + c] * g5[c];
        gq[o] = tab.pair_factor[ab] * v;
        total += gq[o];
      }
      const T* left = mom + (a * S + s) * Mo;
      const T* right = mom + (b * S + s) * Mo;
      T* gl = gmom + (a * S + s) * Mo;
      T* gr = gmom + (b * S + s) * Mo;
      for (int64_t m = 0; m < Mo; ++m) {
        const T g = gq[sp.mono_order[m]];
        gl[m] += g * right[m];
        gr[m] += g * left[m];
      }
      gdiag[a * S + s] -= tab.pair_same[ab] * total;
    }
  }
  for (int64_t t = 0; t < sp.T; ++t) {
    const int64_t ch[3] = {sp.triples[3 * t], sp.triples[3 * t + 1], sp.triples[3 * t + 2]};
    const T g = gfeat[sp.n_g2 + sp.n_g5 + t];
    for (int r = 0; r < 3; ++r) {  // chi = a . (b x c) is cyclic: d chi / d a = b x c, and so on
      T c[3];
      cross(mom + ch[(r + 1) % 3] * Mo + 1, mom + ch[(r + 2) % 3] * Mo + 1, c);
      T* out = gmom + ch[r] * Mo + 1;
      out[0] += g * c[0], out[1] += g * c[1], out[2] += g * c[2];
    }
  }
}

// d E_member / d r_ij for the kept pairs of atom i's row, through the sums of both atoms (written at the pairs'
// list positions). ``grad_sums`` (M, N, stride): gradients of every member's energy by every atom's sums.
template <typename T>
void row_pair_gradients(const Spec& sp, const Row<T>& row, int64_t i, int64_t e_i, const T* parity,
                        int64_t n_members, int64_t n_atoms, const T* grad_sums, T* out) {
  const int64_t K = sp.K, S = sp.S, Mo = sp.Mo, n = row.n, na = row.n_angular;
  const int64_t mom0 = sp.E * K, diag0 = sp.E * (K + S * Mo);
  for (int64_t q = 0; q < n; ++q) {
    const bool angular = q < na;
    const int64_t e = row.element[q], j = row.partner[q];
    const T u[3] = {row.ux[q], row.uy[q], row.uz[q]};
    const T* slope = row.radial_slope.data() + q * K;
    T* o = out + row.pair[q] * 3 * n_members;
    for (int64_t mem = 0; mem < n_members; ++mem) {
      const T* gi = grad_sums + (mem * n_atoms + i) * sp.stride;  // atom i's sums see j in slot e, along u
      const T* gj = grad_sums + (mem * n_atoms + j) * sp.stride;  // atom j's sums see i in slot e_i, along -u
      T dd = 0;  // d E / d distance
#pragma omp simd reduction(+ : dd)
      for (int64_t k = 0; k < K; ++k) dd += (gi[e * K + k] + gj[e_i * K + k]) * slope[k];
      T gu[3] = {0, 0, 0};  // d E / d u (before projection): i's side minus j's side (its unit vector is -u)
      if (angular) {
        const T* md = row.mono.data() + q * Mo * 4;
        for (int64_t s = 0; s < S; ++s) {
          const T* wi = gi + mom0 + (e * S + s) * Mo;
          const T* wj = gj + mom0 + (e_i * S + s) * Mo;
          T acc[4] = {0, 0, 0, 0};
          for (int64_t m = 0; m < Mo; ++m) {
            // monomial m of -u is (-1)^order times that of u; its derivative by -u, (-1)^(order - 1) times
            const T a = wi[m], b = parity[m] * wj[m];
            acc[0] += (a + b) * md[4 * m];
            acc[1] += (a + b) * md[4 * m + 1];
            acc[2] += (a + b) * md[4 * m + 2];
            acc[3] += (a + b) * md[4 * m + 3];
          }
          const T g = row.angular[q * S + s];
          dd += (acc[0] + T(2) * (gi[diag0 + e * S + s] + gj[diag0 + e_i * S + s]) * g) * row.angular_slope[q * S + s];
          gu[0] += g * acc[1], gu[1] += g * acc[2], gu[2] += g * acc[3];
        }
      }
      const T along = gu[0] * u[0] + gu[1] * u[1] + gu[2] * u[2];
      const T inv = T(1) / row.d[q];
      for (int c = 0; c < 3; ++c) o[mem * 3 + c] = dd * u[c] + (gu[c] - along * u[c]) * inv;
    }
  }
}

template <typename T>
std::vector<T> parities(const Spec& sp) {
  std::vector<T> parity(sp.Mo);
  for (int64_t m = 0; m < sp.Mo; ++m) parity[m] = sp.mono_order[m] % 2 ? T(-1) : T(1);
  return parity;
}

// Per-thread copies of a buffer of ``size`` values, added up into ``out`` at the end (no races, no atomics).
template <typename T>
struct Partial {
  int64_t size;
  std::vector<T> data;
  explicit Partial(int64_t n) : size(n), data(at::get_num_threads() * n, T(0)) {}
  T* mine() { return data.data() + at::get_thread_num() * size; }
  void reduce(T* out) const {
    const int64_t n_threads = static_cast<int64_t>(data.size()) / std::max<int64_t>(size, 1);
    at::parallel_for(0, size, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        T sum = 0;
        for (int64_t t = 0; t < n_threads; ++t) sum += data[t * size + k];
        out[k] = sum;
      }
    });
  }
};

template <typename T>
void features_impl(const Spec& sp, const Tables<T>& tab, const T* pos, const T* shift, const int64_t* rowptr,
                   const int64_t* nbr, const bool* keep, const int64_t* species, int64_t n_atoms, T* features,
                   T* moments) {
  const std::vector<T> parity = parities<T>(sp);
  Partial<T> partial(n_atoms * sp.stride);
  at::parallel_for(0, n_atoms, 8, [&](int64_t begin, int64_t end) {
    Row<T> row;
    T* sums = partial.mine();
    for (int64_t i = begin; i < end; ++i) {
      fill_row(sp, tab, pos, shift, rowptr, nbr, keep, species, i, false, row);
      row_accumulate(sp, row, i, species[i], parity.data(), sums);
    }
  });
  std::vector<T> sums(n_atoms * sp.stride);
  partial.reduce(sums.data());
  const int64_t n_mom = sp.E * sp.S * sp.Mo;
  at::parallel_for(0, n_atoms, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* own = sums.data() + i * sp.stride;
      std::copy(own + sp.E * sp.K, own + sp.E * sp.K + n_mom, moments + i * n_mom);
      atom_features(sp, tab, own, own + sp.E * sp.K, own + sp.E * sp.K + n_mom, features + i * sp.F);
    }
  });
}

template <typename T>
void forces_impl(const Spec& sp, const Tables<T>& tab, const T* pos, const T* shift, const int64_t* rowptr,
                 const int64_t* nbr, const bool* keep, const int64_t* species, int64_t n_atoms, int64_t n_members,
                 const T* moments, const T* grad_features, T* grads, T* forces) {
  const int64_t n_mom = sp.E * sp.S * sp.Mo;
  std::vector<T> grad_sums(n_members * n_atoms * sp.stride);  // every atom's, as pairs need both of theirs
  at::parallel_for(0, n_atoms, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t mem = 0; mem < n_members; ++mem) {
        T* g = grad_sums.data() + (mem * n_atoms + i) * sp.stride;
        atom_sum_gradients(sp, tab, moments + i * n_mom, grad_features + (mem * n_atoms + i) * sp.F, g,
                           g + sp.E * sp.K, g + sp.E * sp.K + n_mom);
      }
  });
  const std::vector<T> parity = parities<T>(sp);
  Partial<T> partial(n_members * n_atoms * 3);
  at::parallel_for(0, n_atoms, 8, [&](int64_t begin, int64_t end) {
    Row<T> row;
    T* f = partial.mine();
    for (int64_t i = begin; i < end; ++i) {
      std::fill(grads + rowptr[i] * 3 * n_members, grads + rowptr[i + 1] * 3 * n_members, T(0));
      fill_row(sp, tab, pos, shift, rowptr, nbr, keep, species, i, true, row);
      row_pair_gradients(sp, row, i, species[i], parity.data(), n_members, n_atoms, grad_sums.data(), grads);
      // F_i = sum_j d E / d r_ij over the pairs i -> j, minus the same over the pairs j -> i
      for (int64_t q = 0; q < row.n; ++q) {
        const int64_t j = row.partner[q];
        for (int64_t mem = 0; mem < n_members; ++mem) {
          const T* g = grads + (row.pair[q] * n_members + mem) * 3;
          T* fi = f + (mem * n_atoms + i) * 3;
          T* fj = f + (mem * n_atoms + j) * 3;
          for (int c = 0; c < 3; ++c) fi[c] += g[c], fj[c] -= g[c];
        }
      }
    }
  });
  partial.reduce(forces);
}

// A stable counting sort of the pairs by centre atom: (P,) order and (N + 1,) row pointers.
std::vector<torch::Tensor> sort_pairs_impl(const torch::Tensor& centres, int64_t n_atoms) {
  const int64_t n_pairs = centres.size(0);
  const int64_t* c = centres.data_ptr<int64_t>();
  auto rowptr = torch::zeros({n_atoms + 1}, centres.options());
  auto order = torch::empty({n_pairs}, centres.options());
  int64_t* r = rowptr.data_ptr<int64_t>();
  int64_t* o = order.data_ptr<int64_t>();
  for (int64_t p = 0; p < n_pairs; ++p) {
    TORCH_CHECK(c[p] >= 0 && c[p] < n_atoms, "pair centre out of range");
    ++r[c[p] + 1];
  }
  for (int64_t a = 0; a < n_atoms; ++a) r[a + 1] += r[a];
  std::vector<int64_t> next(r, r + n_atoms);
  for (int64_t p = 0; p < n_pairs; ++p) o[next[c[p]]++] = p;
  return {order, rowptr};
}

// Per-element networks of every member on one atom's features (models.Potential._network_pass): the energy and,
// with ``grad``, its gradient by the raw features. Layers l have weights (M, E, in_l, out_l) and biases (M, E, out_l);
// the chirality columns (from n_plain on) enter as log(1 + chi^2); activation 0: tanh, 1: silu.
template <typename T>
struct Network {
  std::vector<const T*> weights, biases;
  std::vector<int64_t> widths;  // in_0, out_0 = in_1, ..., out_last = 1
  const T *mean, *inv_std, *reference;
  T scale;
  int64_t n_members, n_elements, n_plain, activation;
};

template <typename T>
inline T activate(int64_t kind, T z) {
  return kind == 0 ? std::tanh(z) : z / (T(1) + std::exp(-z));
}

template <typename T>
inline T activation_slope(int64_t kind, T z, T h) {
  if (kind == 0) return T(1) - h * h;
  const T sig = T(1) / (T(1) + std::exp(-z));
  return sig * (T(1) + z * (T(1) - sig));
}

// z (sum of the widths after the input) and h (the same) hold the pre-activations and activations of the layers.
template <typename T>
T atom_network(const Network<T>& net, int64_t m, int64_t e, const T* raw, T* x, T* z, T* h, T* grad, T* g, T* g2) {
  const int64_t F = net.widths[0], L = static_cast<int64_t>(net.weights.size());
  const T* mean = net.mean + e * F;
  const T* inv = net.inv_std + e * F;
  for (int64_t f = 0; f < F; ++f) {
    const T r = f < net.n_plain ? raw[f] : std::log1p(raw[f] * raw[f]);
    x[f] = (r - mean[f]) * inv[f];
  }
  const T* in = x;
  int64_t offset = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t n_in = net.widths[l], n_out = net.widths[l + 1];
    const T* w = net.weights[l] + (m * net.n_elements + e) * n_in * n_out;
    const T* b = net.biases[l] + (m * net.n_elements + e) * n_out;
    T* zl = z + offset;
    for (int64_t o = 0; o < n_out; ++o) zl[o] = b[o];
    for (int64_t i = 0; i < n_in; ++i) {
      const T v = in[i];
      const T* wi = w + i * n_out;
#pragma omp simd
      for (int64_t o = 0; o < n_out; ++o) zl[o] += v * wi[o];
    }
    T* hl = h + offset;
    if (l < L - 1)
      for (int64_t o = 0; o < n_out; ++o) hl[o] = activate(net.activation, zl[o]);
    in = hl;
    offset += n_out;
  }
  const T energy = net.scale * z[offset - 1] + net.reference[m * net.n_elements + e];
  if (!grad) return energy;
  // backward: g holds d E / d (activations of layer l), g2 the next one down
  int64_t n_out = net.widths[L - 1];
  offset -= 1 + n_out;  // start of the last hidden layer (or -n_out: no hidden layer)
  const T* w_last = net.weights[L - 1] + (m * net.n_elements + e) * n_out;
  for (int64_t o = 0; o < n_out; ++o) g[o] = net.scale * w_last[o];
  for (int64_t l = L - 2; l >= 0; --l) {
    const int64_t n_in = net.widths[l];
    const T* zl = z + offset;
    const T* hl = h + offset;
    for (int64_t o = 0; o < n_out; ++o) g[o] *= activation_slope(net.activation, zl[o], hl[o]);
    const T* w = net.weights[l] + (m * net.n_elements + e) * n_in * n_out;
    for (int64_t i = 0; i < n_in; ++i) {
      const T* wi = w + i * n_out;
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t o = 0; o < n_out; ++o) sum += wi[o] * g[o];
      g2[i] = sum;
    }
    std::swap(g, g2);
    n_out = n_in;
    offset -= (l > 0 ? net.widths[l] : 0);
  }
  for (int64_t f = 0; f < F; ++f) {
    const T slope = f < net.n_plain ? T(1) : T(2) * raw[f] / (T(1) + raw[f] * raw[f]);
    grad[f] = g[f] * inv[f] * slope;
  }
  return energy;
}

template <typename T>
void networks_impl(const Network<T>& net, const T* raw, const int64_t* species, int64_t n_atoms, T* energies,
                   T* grad_raw) {
  int64_t hidden = 0, widest = 0;
  for (size_t l = 1; l < net.widths.size(); ++l) hidden += net.widths[l];
  for (auto w : net.widths) widest = std::max(widest, w);
  const int64_t F = net.widths[0];
  at::parallel_for(0, n_atoms, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> x(F), z(hidden), h(hidden), g(widest), g2(widest);
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t m = 0; m < net.n_members; ++m) {
        T* grad = grad_raw ? grad_raw + (m * n_atoms + i) * F : nullptr;
        energies[m * n_atoms + i] = atom_network(net, m, species[i], raw + i * F, x.data(), z.data(), h.data(), grad,
                                                 g.data(), g2.data());
      }
    }
  });
}

// index tables: exps (Mo, 3), pair_a, pair_b, mono_order, triples (T, 3); real tables: radial and angular centres,
// monomial weights, pair factors, same-element flags, G5 coefficients (O, C)
Spec make_spec(const std::vector<torch::Tensor>& index, const std::vector<torch::Tensor>& real, int64_t n_elements,
               const std::vector<double>& scalars) {
  TORCH_CHECK(index.size() == 5 && real.size() == 6 && scalars.size() == 4, "bad descriptor tables");
  for (const auto& t : index) TORCH_CHECK(t.is_contiguous() && t.scalar_type() == torch::kInt64, "int64 tables");
  Spec sp;
  sp.E = n_elements, sp.K = real[0].size(0), sp.S = real[1].size(0), sp.Mo = index[0].size(0);
  sp.AB = index[1].size(0), sp.C = real[5].size(1), sp.O = real[5].size(0), sp.T = index[4].size(0);
  TORCH_CHECK(sp.O <= MAX_POWER, "monomial orders must be below 5");
  TORCH_CHECK(sp.E <= MAX_ELEMENTS, "at most 64 elements");
  sp.n_g2 = sp.E * sp.K, sp.n_g5 = sp.AB * sp.S * sp.C, sp.F = sp.n_g2 + sp.n_g5 + sp.T;
  sp.rc = scalars[0], sp.ra = scalars[1], sp.eta_r = scalars[2], sp.eta_a = scalars[3];
  sp.exps = index[0].data_ptr<int64_t>(), sp.pair_a = index[1].data_ptr<int64_t>();
  sp.pair_b = index[2].data_ptr<int64_t>(), sp.mono_order = index[3].data_ptr<int64_t>();
  sp.triples = index[4].data_ptr<int64_t>();
  sp.stride = sp.E * (sp.K + sp.S * sp.Mo + sp.S);
  return sp;
}

template <typename T>
Tables<T> make_tables(const std::vector<torch::Tensor>& real) {
  for (const auto& t : real) TORCH_CHECK(t.is_contiguous(), "contiguous tables");
  return Tables<T>{real[0].data_ptr<T>(), real[1].data_ptr<T>(), real[2].data_ptr<T>(),
                   real[3].data_ptr<T>(), real[4].data_ptr<T>(), real[5].data_ptr<T>()};
}

}  // namespace

// (N, F) features and (N * E, S * Mo) angular moments (kept for ``forces``)
std::vector<torch::Tensor> features(torch::Tensor positions, torch::Tensor shifts, torch::Tensor rowptr,
                                    torch::Tensor neighbors, torch::Tensor keep, torch::Tensor species,
                                    std::vector<torch::Tensor> index,
                                    std::vector<torch::Tensor> real, int64_t n_elements, std::vector<double> scalars) {
  const Spec sp = make_spec(index, real, n_elements, scalars);
  const int64_t n_atoms = positions.size(0);
  auto feats = torch::empty({n_atoms, sp.F}, positions.options());
  auto moments = torch::empty({n_atoms * sp.E, sp.S * sp.Mo}, positions.options());
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "bp_features", [&] {
    features_impl<scalar_t>(sp, make_tables<scalar_t>(real), positions.data_ptr<scalar_t>(),
                            shifts.data_ptr<scalar_t>(), rowptr.data_ptr<int64_t>(), neighbors.data_ptr<int64_t>(),
                            keep.data_ptr<bool>(), species.data_ptr<int64_t>(), n_atoms, feats.data_ptr<scalar_t>(),
                            moments.data_ptr<scalar_t>());
  });
  return {feats, moments};
}

// (P, M, 3) gradients of every member's energy with respect to the pair vectors and (M, N, 3) member forces, from
// the (M, N, F) gradients of the energies with respect to the features
std::vector<torch::Tensor> forces(torch::Tensor positions, torch::Tensor shifts, torch::Tensor rowptr,
                                  torch::Tensor neighbors, torch::Tensor keep, torch::Tensor species,
                                  std::vector<torch::Tensor> index, std::vector<torch::Tensor> real,
                                  int64_t n_elements, std::vector<double> scalars, torch::Tensor moments,
                                  torch::Tensor grad_features) {
  const Spec sp = make_spec(index, real, n_elements, scalars);
  TORCH_CHECK(grad_features.is_contiguous() && grad_features.size(2) == sp.F, "grad_features must be (M, N, F)");
  const int64_t n_atoms = positions.size(0), n_pairs = neighbors.size(0), n_members = grad_features.size(0);
  auto grads = torch::empty({n_pairs, n_members, 3}, positions.options());
  auto member_forces = torch::empty({n_members, n_atoms, 3}, positions.options());
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "bp_forces", [&] {
    forces_impl<scalar_t>(sp, make_tables<scalar_t>(real), positions.data_ptr<scalar_t>(),
                          shifts.data_ptr<scalar_t>(), rowptr.data_ptr<int64_t>(), neighbors.data_ptr<int64_t>(),
                          keep.data_ptr<bool>(), species.data_ptr<int64_t>(), n_atoms, n_members,
                          moments.data_ptr<scalar_t>(), grad_features.data_ptr<scalar_t>(),
                          grads.data_ptr<scalar_t>(), member_forces.data_ptr<scalar_t>());
  });
  return {grads, member_forces};
}

std::vector<torch::Tensor> sort_pairs(torch::Tensor centres, int64_t n_atoms) {
  TORCH_CHECK(centres.is_contiguous() && centres.scalar_type() == torch::kInt64, "centres must be int64");
  return sort_pairs_impl(centres, n_atoms);
}

// (M, N) atomic energies [eV] and, with ``need_grad``, (M, N, F) their gradients by the raw features
std::vector<torch::Tensor> networks(torch::Tensor raw, torch::Tensor species, std::vector<torch::Tensor> weights,
                                    std::vector<torch::Tensor> biases, torch::Tensor mean, torch::Tensor inv_std,
                                    torch::Tensor reference, double scale, int64_t n_plain, int64_t activation,
                                    bool need_grad) {
  TORCH_CHECK(raw.is_contiguous() && raw.dim() == 2, "raw features must be a contiguous (N, F) tensor");
  TORCH_CHECK(!weights.empty() && weights.size() == biases.size(), "one bias per weight");
  const int64_t n_atoms = raw.size(0), n_members = weights[0].size(0);
  auto energies = torch::empty({n_members, n_atoms}, raw.options());
  auto grad = need_grad ? torch::empty({n_members, n_atoms, raw.size(1)}, raw.options()) : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "bp_networks", [&] {
    Network<scalar_t> net;
    net.widths.push_back(weights[0].size(2));
    for (size_t l = 0; l < weights.size(); ++l) {
      TORCH_CHECK(weights[l].is_contiguous() && biases[l].is_contiguous(), "contiguous weights");
      net.weights.push_back(weights[l].data_ptr<scalar_t>());
      net.biases.push_back(biases[l].data_ptr<scalar_t>());
      net.widths.push_back(weights[l].size(3));
    }
    TORCH_CHECK(net.widths[0] == raw.size(1) && net.widths.back() == 1, "network widths do not match the features");
    net.mean = mean.data_ptr<scalar_t>(), net.inv_std = inv_std.data_ptr<scalar_t>();
    net.reference = reference.data_ptr<scalar_t>(), net.scale = static_cast<scalar_t>(scale);
    net.n_members = n_members, net.n_elements = weights[0].size(1), net.n_plain = n_plain;
    net.activation = activation;
    networks_impl<scalar_t>(net, raw.data_ptr<scalar_t>(), species.data_ptr<int64_t>(), n_atoms,
                            energies.data_ptr<scalar_t>(), need_grad ? grad.data_ptr<scalar_t>() : nullptr);
  });
  return {energies, grad};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("networks", &networks, "per-element networks of every member: atomic energies and feature gradients");
  m.def("sort_pairs", &sort_pairs, "stable counting sort of pairs by centre atom: order and row pointers");
  m.def("features", &features, "descriptor features of every atom over a CSR full neighbour list");
  m.def("forces", &forces, "pair gradients and member forces from the gradients of the energies by the features");
}
