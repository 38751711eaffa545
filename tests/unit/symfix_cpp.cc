// C++ fixture for test-symbolize: an always_inline member function expanded into a
// noinline one, so names must come out qualified with their parameter lists; a template
// instantiated with a lambda, whose names must come out qualified too.  Never run.
#include <cstdio>

namespace ns {

class Class {
public:
        explicit Class(int k) : k_(k) {}
        __attribute__((always_inline)) inline int method(volatile int *p, int n) const
        {
                int s = 0;
                for (int i = 0; i < n; i++)
                        s += p[i] * k_; // @cpp-method-body
                return s;
        }
        __attribute__((noinline)) int run(volatile int *p, int n) const;

private:
        int k_;
};

int Class::run(volatile int *p, int n) const
{
        return method(p, n) + 1; // @cpp-run-call
}

// A class template instantiated with a lambda's type, and the lambda: entities of internal
// linkage, for which GCC writes no linkage name, only the unqualified DW_AT_name ("call",
// "operator()").  Both are inlined into apply.
template <typename F> struct Holder {
        F f;
        __attribute__((always_inline)) inline int call(volatile int *p) const
        {
                return f(p) + 2; // @cpp-holder-call
        }
};

__attribute__((noinline)) int apply(volatile int *p)
{
        auto lam = [](volatile int *q) __attribute__((always_inline))
        {
                return q[0] * 7 + q[1] * q[2]; // @cpp-lambda-body
        };
        Holder<decltype(lam)> h{lam};
        return h.call(p) + 1; // @cpp-apply-call
}

} // namespace ns

int main()
{
        volatile int v[4] = { 1, 2, 3, 4 };
        ns::Class c(3);
        std::printf("%d %d\n", c.run(v, 4), ns::apply(v));
        return 0;
}
